# hub_lib.sh - helpers for the hf-fetch shell tests (sourced, POSIX sh).
#
# hub_start DIR    start tests/hubserver.py over DIR/repos; sets HUB, CDN ports,
#                  exports HF_ENDPOINT, clears the user's HF_* and proxy variables
# hub_stop         stop it
# hub_fault ARGS   add a fault: hub_fault kind=drop where=cdn file=x arg=100 count=2
# hub_stale ARGS   pin a stale /revision answer (force-push emulation), prints the
#                  pinned commit: hub_stale repo=org/x branch=main count=1
# hub_reset        drop faults, stale pins and the request log
# hub_log          the request log (JSON lines) on stdout
# ok DESC / nok DESC / check DESC CMD...   count results; hub_summary prints the line

HUB_PASS=0
HUB_FAIL=0

ok() { HUB_PASS=$((HUB_PASS + 1)); }
nok() { HUB_FAIL=$((HUB_FAIL + 1)); echo "FAIL: $*" >&2; }
check() { # DESC CMD...
	_d=$1; shift
	if "$@"; then ok; else nok "$_d"; fi
}
hub_summary() {
	echo "$HUB_PASS passed, $HUB_FAIL failed"
	[ "$HUB_FAIL" -eq 0 ]
}

hub_start() { # DIR [server args]
	_dir=$1; shift
	rm -f "$_dir/ports"
	python3 "$LQ_ROOT/tests/hubserver.py" --repos "$_dir/repos" --port-file "$_dir/ports" "$@" \
		>"$_dir/server.log" 2>&1 &
	HUB_PID=$!
	_i=0
	while [ ! -s "$_dir/ports" ] && [ $_i -lt 100 ]; do sleep 0.1; _i=$((_i + 1)); done
	[ -s "$_dir/ports" ] || { cat "$_dir/server.log" >&2; return 1; }
	read -r HUB CDN <"$_dir/ports"
	unset HF_TOKEN HUGGING_FACE_HUB_TOKEN HF_TOKEN_PATH HF_HUB_OFFLINE TRANSFORMERS_OFFLINE \
		HF_HUB_DISABLE_IMPLICIT_TOKEN HF_HUB_DISABLE_PROGRESS_BARS HUGGINGFACE_HUB_CACHE \
		http_proxy https_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY all_proxy HF_DEBUG
	export no_proxy=127.0.0.1,localhost NO_PROXY=127.0.0.1,localhost
	export HF_ENDPOINT="http://127.0.0.1:$HUB"
	export HF_HUB_DISABLE_XET=1 HF_HUB_DISABLE_TELEMETRY=1
}

hub_stop() {
	[ -n "$HUB_PID" ] && kill "$HUB_PID" 2>/dev/null && wait "$HUB_PID" 2>/dev/null
	HUB_PID=
}

hub_fault() {
	_q=$(printf '%s&' "$@")
	curl -sf "http://127.0.0.1:$HUB/_test/fault?$_q" >/dev/null
}

hub_stale() {
	_q=$(printf '%s&' "$@")
	curl -sf "http://127.0.0.1:$HUB/_test/stale?$_q"
}

hub_reset() { curl -sf "http://127.0.0.1:$HUB/_test/reset" >/dev/null; }
hub_log() { curl -sf "http://127.0.0.1:$HUB/_test/log"; }

# number of log lines matching an extended regex
hub_count() { hub_log | grep -cE "$1"; }

# commit sha of REPO at REV from the server (model repos)
hub_commit() {
	curl -sf "http://127.0.0.1:$HUB/api/${3:-models}/$1/revision/$2" |
		python3 -c 'import json,sys; print(json.load(sys.stdin)["sha"])'
}

# commit of BRANCH of REPO from the refs listing (never a stale answer)
hub_branch_commit() { # REPO BRANCH
	curl -sf "http://127.0.0.1:$HUB/api/models/$1/refs" | python3 -c 'import json,sys
print([b["targetCommit"] for b in json.load(sys.stdin)["branches"] if b["name"] == sys.argv[1]][0])' "$2"
}

# random integer in [0, N)
rand_below() { od -An -N4 -tu4 /dev/urandom | awk -v n="$1" '{print $1 % n}'; }

# write N pseudo-random bytes (deterministic from SEED) to FILE
gen_bytes() { # FILE N SEED
	python3 -c 'import random,sys
r = random.Random(int(sys.argv[3]))
n = int(sys.argv[2])
with open(sys.argv[1], "wb") as f:
    while n > 0:
        k = min(n, 1 << 20)
        f.write(r.randbytes(k))
        n -= k' "$1" "$2" "$3"
}

# make the fixture repos under DIR/repos
hub_make_repos() { # DIR
	_r=$1/repos
	mkdir -p "$_r/models/org/tiny/main/sub/dir" "$_r/models/org/tiny/v1" \
		"$_r/models/org/redir/main" "$_r/models/org/gated/main" \
		"$_r/models/org/private/main" "$_r/models/org/big/main" \
		"$_r/models/gpt2/main" "$_r/datasets/org/data/main/data"
	echo '{}' >"$_r/models/org/tiny/repo.json"
	printf '{"model_type": "llama", "hidden_size": 64}\n' >"$_r/models/org/tiny/main/config.json"
	printf '{"version": "1.0"}\n' >"$_r/models/org/tiny/main/tokenizer.json"
	gen_bytes "$_r/models/org/tiny/main/model.safetensors" 3000000 1
	echo nested >"$_r/models/org/tiny/main/sub/dir/nested.txt"
	echo spaced >"$_r/models/org/tiny/main/a b+c.txt"
	: >"$_r/models/org/tiny/main/empty.txt"
	printf '{"model_type": "llama", "hidden_size": 32}\n' >"$_r/models/org/tiny/v1/config.json"
	cp "$_r/models/org/tiny/main/model.safetensors" "$_r/models/org/tiny/v1/"
	echo '{"redirect_small": true}' >"$_r/models/org/redir/repo.json"
	printf '{"model_type": "gpt2"}\n' >"$_r/models/org/redir/main/config.json"
	gen_bytes "$_r/models/org/redir/main/pytorch_model.bin" 200000 2
	echo '{"gated": "manual", "access": ["hf_good"]}' >"$_r/models/org/gated/repo.json"
	printf '{"model_type": "llama"}\n' >"$_r/models/org/gated/main/config.json"
	echo '{"private": true, "access": ["hf_good"]}' >"$_r/models/org/private/repo.json"
	printf '{"model_type": "llama"}\n' >"$_r/models/org/private/main/config.json"
	echo '{}' >"$_r/models/org/big/repo.json"
	gen_bytes "$_r/models/org/big/main/big.safetensors" 6000000 3
	printf '{"model_type": "llama"}\n' >"$_r/models/org/big/main/config.json"
	echo '{}' >"$_r/models/gpt2/repo.json"
	printf '{"model_type": "gpt2"}\n' >"$_r/models/gpt2/main/config.json"
	echo '{}' >"$_r/datasets/org/data/repo.json"
	printf 'a,b\n1,2\n' >"$_r/datasets/org/data/main/data/train.csv"
	printf '# data\n' >"$_r/datasets/org/data/main/README.md"
}

# every file under a snapshot dir resolves to a blob whose content matches
# its name (sha256 or git blob sha1); prints offenders
hub_verify_snapshots() { # REPO_DIR
	python3 - "$1" <<'EOF'
import hashlib, os, sys
bad = 0
root = sys.argv[1]
snap = os.path.join(root, "snapshots")
for dp, dn, fn in os.walk(snap):
    for f in fn:
        p = os.path.join(dp, f)
        real = os.path.realpath(p)
        if not os.path.isfile(real):
            print("broken:", p); bad += 1; continue
        name = os.path.basename(real)
        data = open(real, "rb").read()
        if len(name) == 64:
            h = hashlib.sha256(data).hexdigest()
        else:
            h = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        if h != name:
            print("unverified:", p); bad += 1
sys.exit(1 if bad else 0)
EOF
}
