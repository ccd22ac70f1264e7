#!/bin/sh
# cli_hf_fetch.sh - hf-fetch against the loopback test hub (tests/hubserver.py).
# Needs python3 and curl; the interop part needs huggingface_hub (skipped if missing).
: "${LQ_ROOT:=$(cd "$(dirname "$0")/.." && pwd)}"
: "${LQ_BIN:=$LQ_ROOT/build/bin}"
. "$LQ_ROOT/tests/hub_lib.sh"

T=$(mktemp -d "${TMPDIR:-/tmp}/hf-fetch-test.XXXXXX")
cleanup() {
	hub_stop
	[ -n "$TLS_PID" ] && kill "$TLS_PID" 2>/dev/null
	[ -n "$MNT" ] && umount "$MNT" 2>/dev/null
	rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

if ! command -v python3 >/dev/null || ! command -v curl >/dev/null; then
	echo "skipping cli_hf_fetch: python3 or curl missing"
	echo "0 passed, 0 failed"
	exit 0
fi

# every run is bounded in time (a hang fails the test instead of blocking make check);
# FX is the bare binary, for the tests that kill -9 it
FX="$LQ_BIN/hf-fetch"
mkdir -p "$T/bin"
printf '#!/bin/sh\nexec timeout -k 5 120 "%s" "$@"\n' "$FX" >"$T/bin/hf-fetch"
chmod +x "$T/bin/hf-fetch"
F="$T/bin/hf-fetch"

hub_make_repos "$T"
hub_start "$T" --page-size 3 || { echo "cannot start the test hub"; echo "0 passed, 1 failed"; exit 1; }
export HF_HOME="$T/home" HF_HUB_CACHE="$T/cache"
C="$T/cache"
R="$C/models--org--tiny"
SRC="$T/repos/models/org/tiny/main"
FAST="--retry-delay 0.01"
MAIN=$(hub_commit org/tiny main)
V1=$(hub_commit org/tiny v1)
SHA_MODEL=$(sha256sum "$SRC/model.safetensors" | cut -d' ' -f1)

# ------------------------------------------------------------------ usage
"$F" --help >"$T/out" 2>&1; check "--help exits 0" [ $? -eq 0 ]
check "--help shows usage" grep -q 'usage: hf-fetch' "$T/out"
"$F" >/dev/null 2>&1; check "no repo: exit 2" [ $? -eq 2 ]
"$F" --bogus org/tiny >/dev/null 2>&1; check "bad option: exit 2" [ $? -eq 2 ]
"$F" -j 0 org/tiny >/dev/null 2>&1; check "bad -j: exit 2" [ $? -eq 2 ]
"$F" --local-dir "$T/x" --cache-dir "$T/y" org/tiny >/dev/null 2>&1
check "--local-dir with --cache-dir: exit 2" [ $? -eq 2 ]
"$F" 'org/a--b' >/dev/null 2>"$T/err"; check "invalid repo id: exit 2" [ $? -eq 2 ]
check "invalid repo id named" grep -q "invalid repo id 'org/a--b'" "$T/err"
"$F" org/tiny ../etc/passwd >/dev/null 2>&1; check "'..' file name refused" [ $? -eq 2 ]

# ------------------------------------------------------------------ snapshot
hub_reset
"$F" org/tiny >"$T/out" 2>"$T/err"; rc=$?
check "snapshot: exit 0" [ $rc -eq 0 ]
check "snapshot: stdout is the snapshot dir" [ "$(cat "$T/out")" = "$R/snapshots/$MAIN" ]
check "snapshot: one line on stdout" [ "$(wc -l <"$T/out")" -eq 1 ]
check "snapshot: stderr silent when not a TTY" [ ! -s "$T/err" ]
for f in config.json tokenizer.json model.safetensors sub/dir/nested.txt "a b+c.txt" empty.txt; do
	check "content of $f" cmp -s "$SRC/$f" "$R/snapshots/$MAIN/$f"
	check "$f is a symlink" [ -L "$R/snapshots/$MAIN/$f" ]
done
check "LFS blob named by sha256" [ -f "$R/blobs/$SHA_MODEL" ]
check "relative link, top level" [ "$(readlink "$R/snapshots/$MAIN/model.safetensors")" = "../../blobs/$SHA_MODEL" ]
GIT_NESTED=$(python3 -c 'import hashlib,sys; d=open(sys.argv[1],"rb").read(); print(hashlib.sha1(b"blob %d\0" % len(d) + d).hexdigest())' "$SRC/sub/dir/nested.txt")
check "relative link, nested (git sha1 blob)" [ "$(readlink "$R/snapshots/$MAIN/sub/dir/nested.txt")" = "../../../../blobs/$GIT_NESTED" ]
check "refs/main holds the commit" [ "$(cat "$R/refs/main")" = "$MAIN" ]
check "refs/main has no newline" [ "$(wc -c <"$R/refs/main")" -eq 40 ]
check "CACHEDIR.TAG" grep -q '^Signature: 8a477f597d28d172789f06886806bc55' "$C/CACHEDIR.TAG"
check ".locks folder" [ -d "$C/.locks/models--org--tiny" ]
check "no .incomplete left" [ -z "$(find "$R/blobs" -name '*.incomplete*')" ]
check "all snapshot files verified" hub_verify_snapshots "$R"
check "tree pagination followed" [ "$(hub_count '/tree/.*cursor=')" -ge 2 ]
check "no token sent anywhere" [ "$(hub_count '"auth": "Bearer')" -eq 0 ]
check "LFS content from the CDN" [ "$(hub_count '"port": "cdn".*"status": 200')" -eq 1 ]
check "user agent hf-fetch/" [ "$(hub_count '"ua": "hf-fetch/')" -ge 1 ]

hub_reset
"$F" org/tiny >"$T/out2" 2>/dev/null
check "second run: same path" cmp -s "$T/out" "$T/out2"
check "second run: no file requests" [ "$(hub_count '/resolve/|"port": "cdn"')" -eq 0 ]

# ------------------------------------------------------------------ single file, revisions
hub_reset
out=$("$F" org/tiny config.json 2>/dev/null)
check "single file: prints pointer" [ "$out" = "$R/snapshots/$MAIN/config.json" ]
check "single file cached: HEAD only" [ "$(hub_count '"GET"')" -eq 0 ]
out=$("$F" -r v1 org/tiny model.safetensors 2>/dev/null)
check "-r v1: pointer in v1 snapshot" [ "$out" = "$R/snapshots/$V1/model.safetensors" ]
check "-r v1: refs/v1 written" [ "$(cat "$R/refs/v1")" = "$V1" ]
check "-r v1: blob shared across revisions" [ "$(hub_count '"port": "cdn"')" -eq 0 ]
hub_reset
out=$("$F" -r "$V1" org/tiny model.safetensors 2>/dev/null)
check "commit revision + cached: no request" [ "$out" = "$R/snapshots/$V1/model.safetensors" ] && \
	check "commit revision + cached: zero requests" [ "$(hub_log | wc -l)" -eq 0 ]
out=$("$F" org/tiny sub/dir/nested.txt 2>/dev/null)
check "single nested file" [ "$out" = "$R/snapshots/$MAIN/sub/dir/nested.txt" ]

"$F" org/tiny missing.txt >/dev/null 2>"$T/err"; rc=$?
check "missing file: exit 1" [ $rc -eq 1 ]
check "missing file: message" grep -q "file 'missing.txt' not found in model 'org/tiny'" "$T/err"
check "missing file: .no_exist marker" [ -f "$R/.no_exist/$MAIN/missing.txt" ]
HF_HUB_OFFLINE=1 "$F" org/tiny missing.txt >/dev/null 2>"$T/err"
check "offline: cached .no_exist reported" grep -q "does not exist.*(cached)" "$T/err"

# ------------------------------------------------------------------ filters
C2="$T/c2"
"$F" --cache-dir "$C2" --include '*.json' org/tiny >/dev/null 2>&1
S2="$C2/models--org--tiny/snapshots/$MAIN"
check "--include *.json" [ -f "$S2/config.json" ] && [ -f "$S2/tokenizer.json" ] && [ ! -e "$S2/model.safetensors" ]
check "--include: no trees/ written, refs written" [ -f "$C2/models--org--tiny/refs/main" ]
"$F" --cache-dir "$C2" --include 'sub*.txt' org/tiny >/dev/null 2>&1
check "'*' matches across '/'" [ -f "$S2/sub/dir/nested.txt" ]
C3="$T/c3"
"$F" --cache-dir "$C3" --exclude '*.safetensors' --exclude 'sub/' org/tiny >/dev/null 2>&1
S3="$C3/models--org--tiny/snapshots/$MAIN"
check "--exclude" [ -f "$S3/config.json" ] && [ ! -e "$S3/model.safetensors" ] && [ ! -e "$S3/sub" ]
C4="$T/c4"
"$F" --cache-dir "$C4" org/tiny config.json 'a b+c.txt' >"$T/out" 2>/dev/null
S4="$C4/models--org--tiny/snapshots/$MAIN"
check "several files = patterns, prints snapshot dir" [ "$(cat "$T/out")" = "$S4" ] && [ -f "$S4/config.json" ] && [ -f "$S4/a b+c.txt" ] && [ ! -e "$S4/tokenizer.json" ]
"$F" --cache-dir "$T/c5" org/tiny sub/ >/dev/null 2>&1
check "'dir/' selects the folder" [ -f "$T/c5/models--org--tiny/snapshots/$MAIN/sub/dir/nested.txt" ] && [ ! -e "$T/c5/models--org--tiny/snapshots/$MAIN/config.json" ]

# ------------------------------------------------------------------ offline
hub_reset
out=$(HF_HUB_OFFLINE=1 "$F" org/tiny 2>/dev/null)
check "offline snapshot from cache" [ "$out" = "$R/snapshots/$MAIN" ]
out=$(HF_HUB_OFFLINE=1 "$F" org/tiny config.json 2>/dev/null)
check "offline file from cache" [ "$out" = "$R/snapshots/$MAIN/config.json" ]
out=$("$F" --offline -r v1 org/tiny model.safetensors 2>/dev/null)
check "--offline with a branch ref" [ "$out" = "$R/snapshots/$V1/model.safetensors" ]
check "offline: no request at all" [ "$(hub_log | wc -l)" -eq 0 ]
HF_HUB_OFFLINE=1 "$F" --cache-dir "$T/empty" org/tiny >/dev/null 2>"$T/err"; rc=$?
check "offline, nothing cached: exit 1" [ $rc -eq 1 ]
check "offline, nothing cached: message" grep -q "offline" "$T/err"
HF_HUB_OFFLINE=1 "$F" org/big >/dev/null 2>&1
check "offline, repo not cached: exit 1" [ $? -eq 1 ]

# ------------------------------------------------------------------ 307 relative redirects, other repo kinds
out=$("$F" org/redir 2>/dev/null)
check "307 repo: exit 0" [ -n "$out" ]
check "307 repo: config content" cmp -s "$T/repos/models/org/redir/main/config.json" "$out/config.json"
check "307 repo: LFS content" cmp -s "$T/repos/models/org/redir/main/pytorch_model.bin" "$out/pytorch_model.bin"
check "307 followed via resolve-cache" [ "$(hub_count 'resolve-cache')" -ge 1 ]
out=$("$F" gpt2 config.json 2>/dev/null)
check "namespace-less repo" [ "$out" = "$C/models--gpt2/snapshots/$(hub_commit gpt2 main)/config.json" ]
out=$("$F" --repo-type dataset org/data 2>/dev/null)
check "dataset repo" [ -f "$out/data/train.csv" ] && case $out in "$C/datasets--org--data/snapshots/"*) true;; *) false;; esac
out2=$("$F" datasets/org/data 2>/dev/null)
check "datasets/ prefix" [ "$out" = "$out2" ]
out2=$("$F" hf://datasets/org/data 2>/dev/null)
check "hf://datasets/ URI" [ "$out" = "$out2" ]
out=$("$F" hf://org/tiny@v1/model.safetensors 2>/dev/null)
check "hf://ID@REV/PATH URI" [ "$out" = "$R/snapshots/$V1/model.safetensors" ]
out=$("$F" hf://org/tiny/sub/dir/nested.txt 2>/dev/null)
check "hf://ID/PATH URI" [ "$out" = "$R/snapshots/$MAIN/sub/dir/nested.txt" ]
"$F" -r main hf://org/tiny >/dev/null 2>&1
check "hf:// with --revision: exit 2" [ $? -eq 2 ]

# ------------------------------------------------------------------ tokens
hub_reset
HF_TOKEN=hf_good "$F" --cache-dir "$T/tok" org/tiny >/dev/null 2>&1
check "token: sent to the hub" [ "$(hub_count '"port": "hub".*"auth": "Bearer hf_good"')" -ge 1 ]
check "token: never sent to the CDN" [ "$(hub_count '"port": "cdn".*"auth": "Bearer')" -eq 0 ]
check "token: no CDN violation" [ "$(hub_count 'violation')" -eq 0 ]
mkdir -p "$T/home"
printf 'hf_good\n' >"$T/home/token"
"$F" org/gated config.json >/dev/null 2>&1
check "token from \$HF_HOME/token" [ $? -eq 0 ]
printf ' hf_noaccess \n' >"$T/tokfile"
HF_TOKEN_PATH="$T/tokfile" "$F" --cache-dir "$T/tok2" org/gated config.json >/dev/null 2>"$T/err"
check "HF_TOKEN_PATH wins over \$HF_HOME/token" grep -q "not in the authorized list" "$T/err"
HF_TOKEN=hf_noaccess "$F" --token hf_good --cache-dir "$T/tok3" org/gated config.json >/dev/null 2>&1
check "--token wins over HF_TOKEN" [ $? -eq 0 ]
hub_reset
HF_HUB_DISABLE_IMPLICIT_TOKEN=1 "$F" --cache-dir "$T/tok4" org/tiny config.json >/dev/null 2>&1
check "HF_HUB_DISABLE_IMPLICIT_TOKEN" [ "$(hub_count 'Bearer')" -eq 0 ]
rm -f "$T/home/token"

# ------------------------------------------------------------------ errors
"$F" --cache-dir "$T/e" org/gated >/dev/null 2>"$T/err"; rc=$?
check "gated, no token: exit 1" [ $rc -eq 1 ]
check "gated, no token: tells to accept the licence" grep -q "gated: accept its licence on http://127.0.0.1:$HUB/org/gated, then set a token" "$T/err"
check "gated: nothing in snapshots" [ -z "$(find "$T/e" -path '*snapshots/*' -type l 2>/dev/null)" ]
HF_TOKEN=hf_noaccess "$F" --cache-dir "$T/e" org/gated >/dev/null 2>"$T/err"
check "gated, token without access" grep -q "not in the authorized list" "$T/err"
HF_TOKEN=hf_good "$F" --cache-dir "$T/e" org/gated >/dev/null 2>&1
check "gated, token with access: ok" [ $? -eq 0 ]
"$F" --cache-dir "$T/e" org/private >/dev/null 2>"$T/err"; rc=$?
check "private, no token: exit 1" [ $rc -eq 1 ]
check "private, no token: message" grep -q "model 'org/private' not found (if it is private or gated, set a token" "$T/err"
HF_TOKEN=hf_noaccess "$F" --cache-dir "$T/e" org/private >/dev/null 2>"$T/err"
check "private, token without access" grep -q "not found, or your token has no access" "$T/err"
HF_TOKEN=hf_good "$F" --cache-dir "$T/e" org/private config.json >/dev/null 2>&1
check "private, token with access" [ $? -eq 0 ]
HF_TOKEN=hf_bad "$F" --cache-dir "$T/e" org/tiny >/dev/null 2>"$T/err"
check "bad token" grep -q "invalid or expired token" "$T/err"
"$F" --cache-dir "$T/e" org/nope >/dev/null 2>"$T/err"; rc=$?
check "repo not found: exit 1" [ $rc -eq 1 ]
check "repo not found: message" grep -q "model 'org/nope' not found" "$T/err"
"$F" --cache-dir "$T/e" -r nope org/tiny >/dev/null 2>"$T/err"
check "revision not found" grep -q "revision 'nope' not found in model 'org/tiny'" "$T/err"
"$F" --cache-dir "$T/e" -r nope org/tiny config.json >/dev/null 2>"$T/err"
check "revision not found (single file)" grep -q "revision 'nope' not found" "$T/err"
"$F" --cache-dir "$T/e" --endpoint http://127.0.0.1:1 --retries 1 $FAST org/tiny >/dev/null 2>"$T/err"; rc=$?
check "unreachable hub: exit 1" [ $rc -eq 1 ]
check "unreachable hub: message" grep -q "cannot download from 127.0.0.1:1" "$T/err"
t0=$(date +%s)
out=$("$F" --endpoint http://127.0.0.1:1 org/tiny config.json 2>"$T/err")
check "unreachable hub: falls back to the cache" [ "$out" = "$R/snapshots/$MAIN/config.json" ]
check "unreachable hub: warns" grep -q "using the cached file" "$T/err"
out=$("$F" --endpoint http://127.0.0.1:1 org/tiny 2>"$T/err")
check "unreachable hub: cached snapshot" [ "$out" = "$R/snapshots/$MAIN" ]
check "unreachable hub + cache: no retry delay" [ $(($(date +%s) - t0)) -le 2 ]

# ------------------------------------------------------------------ force-push: stale /revision answer
# (hub-protocol.md section 7, #12): /revision/main still names the old commit,
# whose files are gone; hf-fetch asks for main's commit again and starts over once
FPR="$T/repos/models/org/fp"
FPS="$FPR/main"
mkdir -p "$FPS"
echo '{}' >"$FPR/repo.json"
printf '{"model_type": "llama", "v": 1}\n' >"$FPS/config.json"
echo "old notes" >"$FPS/notes.txt"
gen_bytes "$FPS/model.safetensors" 500000 7
SHA_FP=$(sha256sum "$FPS/model.safetensors" | cut -d' ' -f1)
fp_push() { # N: force-push main: config.json changed, notes.txt gone, new.txt added
	printf '{"model_type": "llama", "v": %s}\n' "$1" >"$FPS/config.json"
	rm -f "$FPS/notes.txt"
	echo "new $1" >"$FPS/new.txt"
}
fp_files() { (cd "$1" && find . ! -type d | sort | tr '\n' ' '); }
# the model's blob is already in the cache (fetched before the push)
"$F" --cache-dir "$T/fp1" org/fp model.safetensors >/dev/null 2>&1
FP1="$T/fp1/models--org--fp"
rm -rf "$FP1/snapshots" "$FP1/refs"
hub_reset
OLD=$(hub_stale repo=org/fp branch=main count=1)
fp_push 2
NEW=$(hub_branch_commit org/fp main)
check "force-push: the branch moved" [ -n "$OLD" ] && [ -n "$NEW" ] && [ "$OLD" != "$NEW" ]
"$F" --cache-dir "$T/fp1" $FAST org/fp >"$T/out" 2>"$T/err"; rc=$?
check "stale revision: exit 0" [ $rc -eq 0 ] || cat "$T/err" >&2
check "stale revision: prints the new snapshot" [ "$(cat "$T/out")" = "$FP1/snapshots/$NEW" ]
check "stale revision: refs/main is the new commit" [ "$(cat "$FP1/refs/main" 2>/dev/null)" = "$NEW" ]
check "stale revision: only the new snapshot" [ "$(ls "$FP1/snapshots")" = "$NEW" ]
check "stale revision: the new commit's files, no old one" \
	[ "$(fp_files "$FP1/snapshots/$NEW")" = "./config.json ./model.safetensors ./new.txt " ]
check "stale revision: new content" cmp -s "$FPS/config.json" "$FP1/snapshots/$NEW/config.json"
check "stale revision: snapshot verified" hub_verify_snapshots "$FP1"
check "stale revision: re-resolved by HEAD /resolve/main" \
	[ "$(hub_count '"method": "HEAD", "path": "/org/fp/resolve/main/')" -ge 1 ]
check "stale revision: verified blob reused" [ "$(hub_count '"port": "cdn"')" -eq 0 ]
check "stale revision: says the branch moved" grep -q "revision 'main' moved from $OLD to $NEW" "$T/err"

# the old commit's tree is gone too (RevisionNotFound): /revision asked again
hub_reset
OLD=$(hub_stale repo=org/fp branch=main count=1 tree=gone)
fp_push 3
NEW=$(hub_branch_commit org/fp main)
"$F" --cache-dir "$T/fp2" $FAST org/fp >"$T/out" 2>"$T/err"; rc=$?
FP2="$T/fp2/models--org--fp"
check "stale revision, old tree gone: exit 0" [ $rc -eq 0 ] || cat "$T/err" >&2
check "stale revision, old tree gone: refs/main" [ "$(cat "$FP2/refs/main" 2>/dev/null)" = "$NEW" ]
check "stale revision, old tree gone: only the new snapshot" [ "$(ls "$FP2/snapshots")" = "$NEW" ] &&
	[ "$(fp_files "$FP2/snapshots/$NEW")" = "./config.json ./model.safetensors ./new.txt " ]

# a single file resolves the branch itself: not affected
hub_reset
OLD=$(hub_stale repo=org/fp branch=main count=-1)
fp_push 4
NEW=$(hub_branch_commit org/fp main)
out=$("$F" --cache-dir "$T/fp3" $FAST org/fp config.json 2>/dev/null)
check "stale revision, single file: new commit" [ "$out" = "$T/fp3/models--org--fp/snapshots/$NEW/config.json" ]

# the stale answer persists everywhere: a clear error, nothing half-written
hub_reset
OLD=$(hub_stale repo=org/fp branch=main count=-1 resolve=1)
fp_push 5
"$F" --cache-dir "$T/fp4" $FAST org/fp >"$T/out" 2>"$T/err"; rc=$?
FP4="$T/fp4/models--org--fp"
check "stale persists: exit 1" [ $rc -eq 1 ]
check "stale persists: one-line error" [ "$(wc -l <"$T/err")" -eq 1 ]
check "stale persists: names repo, file and commit" \
	grep -q "model 'org/fp': file 'config.json' of commit $OLD is gone (404) and revision 'main' still resolves to $OLD" "$T/err"
check "stale persists: no snapshot left" [ -z "$(ls "$FP4/snapshots" 2>/dev/null)" ]
check "stale persists: no ref" [ ! -e "$FP4/refs/main" ]
check "stale persists: nothing on stdout" [ ! -s "$T/out" ]
check "stale persists: no partial" [ -z "$(find "$T/fp4" -name '*.incomplete*')" ]

# the new commit's files are missing too: the error names both commits
hub_reset
OLD=$(hub_stale repo=org/fp branch=main count=1)
fp_push 6
NEW=$(hub_branch_commit org/fp main)
hub_fault kind=status where=resolve 'file=*' 'method=*' arg=404 code=EntryNotFound count=-1
"$F" --cache-dir "$T/fp5" $FAST org/fp >"$T/out" 2>"$T/err"; rc=$?
FP5="$T/fp5/models--org--fp"
check "gone after the restart: exit 1" [ $rc -eq 1 ]
check "gone after the restart: names both commits" \
	grep -q "model 'org/fp': file 'config.json' not found at commit $NEW either (revision 'main' resolved to $OLD, then to $NEW" "$T/err"
check "gone after the restart: no snapshot, no ref" [ -z "$(ls "$FP5/snapshots" 2>/dev/null)" ] && [ ! -e "$FP5/refs/main" ]
check "gone after the restart: one restart only" [ "$(hub_count '/api/models/org/fp/tree/')" -eq 2 ]

# a commit revision is never re-resolved
hub_reset
"$F" --cache-dir "$T/fp6" $FAST -r "$OLD" org/fp >/dev/null 2>"$T/err"; rc=$?
check "old commit asked by sha: exit 1, no retry" [ $rc -eq 1 ] && [ "$(hub_count '/revision/')" -eq 0 ]
hub_reset

# ------------------------------------------------------------------ retries
hub_reset
hub_fault kind=status where=resolve method=HEAD file=config.json arg=503 count=2 retry_after=0
hub_fault kind=status where=cdn file=model.safetensors arg=502 count=1
hub_fault kind=ratelimit where=api count=1 arg=0
hub_fault kind=status where=api arg=500 count=1
"$F" --cache-dir "$T/r1" $FAST org/tiny >/dev/null 2>"$T/err"; rc=$?
check "503/502/429/500 retried: exit 0" [ $rc -eq 0 ]
check "retries: 503s seen" [ "$(hub_count '"status": 503')" -eq 2 ]
check "retries: 429 seen" [ "$(hub_count '"status": 429')" -eq 1 ]
check "retries: files verified" hub_verify_snapshots "$T/r1/models--org--tiny"
hub_reset
hub_fault kind=status where=resolve method=HEAD file=config.json arg=429 count=1 retry_after=1
t0=$(date +%s.%N)
"$F" --cache-dir "$T/r2" $FAST org/tiny config.json >/dev/null 2>&1; rc=$?
t1=$(date +%s.%N)
check "Retry-After honoured" [ $rc -eq 0 ] && awk -v a="$t0" -v b="$t1" 'BEGIN{exit !(b - a >= 0.9)}'
hub_reset
hub_fault kind=status where=cdn file=model.safetensors arg=500 count=-1
"$F" --cache-dir "$T/r3" --retries 2 $FAST org/tiny >/dev/null 2>"$T/err"; rc=$?
check "persistent 500: exit 1" [ $rc -eq 1 ]
check "persistent 500: bounded retries" [ "$(hub_count '"status": 500')" -eq 3 ]
check "persistent 500: message names the file" grep -q "model.safetensors.*HTTP 500" "$T/err"
check "persistent 500: not in snapshots" [ ! -e "$T/r3/models--org--tiny/snapshots/$MAIN/model.safetensors" ]
check "persistent 500: other files there" [ -f "$T/r3/models--org--tiny/snapshots/$MAIN/config.json" ]

# ------------------------------------------------------------------ cut transfers, resume
hub_reset
hub_fault kind=drop where=cdn file=model.safetensors arg=100000 count=3
"$F" --cache-dir "$T/d1" $FAST org/tiny model.safetensors >/dev/null 2>"$T/err"; rc=$?
check "dropped connection: exit 0" [ $rc -eq 0 ]
check "dropped connection: resumed with Range" [ "$(hub_count '"range": "bytes=[1-9][0-9]*-"')" -ge 1 ]
check "dropped connection: content" cmp -s "$SRC/model.safetensors" "$T/d1/models--org--tiny/snapshots/$MAIN/model.safetensors"

# partial .incomplete from an earlier process: resumed with Range + 206
D2="$T/d2/models--org--tiny"
mkdir -p "$D2/blobs"
head -c 1234567 "$SRC/model.safetensors" >"$D2/blobs/$SHA_MODEL.incomplete"
hub_reset
"$F" --cache-dir "$T/d2" org/tiny model.safetensors >/dev/null 2>&1
check "resume from .incomplete: Range sent" [ "$(hub_count '"range": "bytes=1234567-", "status": 206')" -eq 1 ]
check "resume from .incomplete: content" cmp -s "$SRC/model.safetensors" "$D2/snapshots/$MAIN/model.safetensors"
check "resume from .incomplete: partial gone" [ ! -e "$D2/blobs/$SHA_MODEL.incomplete" ]

# server ignores Range: start over (never append a 200 body)
D3="$T/d3/models--org--tiny"
mkdir -p "$D3/blobs"
head -c 777777 "$SRC/model.safetensors" >"$D3/blobs/$SHA_MODEL.incomplete"
hub_reset
hub_fault kind=norange where=cdn count=1
"$F" --cache-dir "$T/d3" org/tiny model.safetensors >/dev/null 2>&1
check "Range ignored (200): restarted, content right" cmp -s "$SRC/model.safetensors" "$D3/snapshots/$MAIN/model.safetensors"

# garbage partial (wrong bytes): hash mismatch, downloaded again, right in the end
D4="$T/d4/models--org--tiny"
mkdir -p "$D4/blobs"
head -c 500000 /dev/zero >"$D4/blobs/$SHA_MODEL.incomplete"
"$F" --cache-dir "$T/d4" org/tiny model.safetensors >/dev/null 2>"$T/err"
check "bad partial: detected and re-downloaded" cmp -s "$SRC/model.safetensors" "$D4/snapshots/$MAIN/model.safetensors"

# kill -9 at random points, then resume; the snapshot never holds anything unverified
ok_trials=0
D5="$T/d5/models--org--tiny"
for trial in 1 2 3 4 5 6 7 8; do
	hub_reset
	hub_fault kind=slow where=cdn arg=0.01 count=1
	"$FX" --cache-dir "$T/d5" -c 1 org/tiny model.safetensors >/dev/null 2>&1 &
	pid=$!
	sleep "0.$(rand_below 6)$(rand_below 10)"
	kill -9 $pid 2>/dev/null
	wait $pid 2>/dev/null
	if [ -d "$D5" ] && ! hub_verify_snapshots "$D5" >/dev/null; then
		nok "kill trial $trial left an unverified snapshot file"
	else
		ok_trials=$((ok_trials + 1))
	fi
	rm -f "$D5/snapshots/$MAIN/model.safetensors" "$D5/blobs/$SHA_MODEL"
	# keep the partial: the next trial resumes it
done
check "kill trials: snapshots always verified" [ $ok_trials -eq 8 ]
hub_reset
"$F" --cache-dir "$T/d5" org/tiny model.safetensors >/dev/null 2>&1
check "after kills: final SHA-256 right" [ "$(sha256sum <"$D5/snapshots/$MAIN/model.safetensors" | cut -d' ' -f1)" = "$SHA_MODEL" ]

# expired signed CDN URL (403) after part of the file: fresh URL, resumed
hub_reset
hub_fault kind=drop where=cdn file=model.safetensors arg=1000000 count=1
hub_fault kind=expire where=cdn file=model.safetensors count=1
"$F" --cache-dir "$T/d6" $FAST org/tiny model.safetensors >/dev/null 2>"$T/err"; rc=$?
check "expired CDN URL: exit 0" [ $rc -eq 0 ]
check "expired CDN URL: resolved again" [ "$(hub_count '"HEAD".*model.safetensors')" -eq 2 ]
check "expired CDN URL: resumed" [ "$(hub_count '"range": "bytes=1000000-", "status": 206')" -eq 1 ]
check "expired CDN URL: content" cmp -s "$SRC/model.safetensors" "$T/d6/models--org--tiny/snapshots/$MAIN/model.safetensors"

# connection cut at random offsets: always resumed to the right content
good=0
for trial in 1 2 3 4 5 6 7 8 9 10 11 12; do
	hub_reset
	hub_fault kind=drop where=cdn file=model.safetensors arg=$(rand_below 3000000) count=$((1 + $(rand_below 3)))
	out=$("$F" --cache-dir "$T/rd$trial" $FAST -c 1 org/tiny model.safetensors 2>/dev/null) &&
		[ "$(sha256sum <"$out" | cut -d' ' -f1)" = "$SHA_MODEL" ] && good=$((good + 1))
	rm -rf "$T/rd$trial"
done
check "random cuts: 12 of 12 trials verified" [ $good -eq 12 ]

# ------------------------------------------------------------------ corrupt bodies
hub_reset
hub_fault kind=corrupt where=cdn file=model.safetensors count=1
"$F" --cache-dir "$T/x1" org/tiny model.safetensors >/dev/null 2>"$T/err"; rc=$?
check "one corrupt body: retried, exit 0" [ $rc -eq 0 ]
check "one corrupt body: warned" grep -q "SHA-256 mismatch" "$T/err"
check "one corrupt body: content" cmp -s "$SRC/model.safetensors" "$T/x1/models--org--tiny/snapshots/$MAIN/model.safetensors"
hub_reset
hub_fault kind=corrupt where=cdn file=model.safetensors count=-1
"$F" --cache-dir "$T/x2" org/tiny >/dev/null 2>"$T/err"; rc=$?
X2="$T/x2/models--org--tiny"
check "corrupt always: exit 1" [ $rc -eq 1 ]
check "corrupt always: names the file" grep -q "model.safetensors: SHA-256 mismatch" "$T/err"
check "corrupt always: not in snapshots" [ ! -e "$X2/snapshots/$MAIN/model.safetensors" ]
check "corrupt always: no blob, no partial" [ ! -e "$X2/blobs/$SHA_MODEL" ] && [ ! -e "$X2/blobs/$SHA_MODEL.incomplete" ]
check "corrupt always: snapshots verified" hub_verify_snapshots "$X2"
hub_reset
hub_fault kind=corrupt where=resolve file=config.json count=-1
"$F" --cache-dir "$T/x3" org/tiny config.json >/dev/null 2>"$T/err"
check "corrupt small file: git SHA-1 mismatch" grep -q "config.json: git SHA-1 mismatch" "$T/err"

hub_reset
hub_fault kind=html where=cdn file=model.safetensors count=-1
"$F" --cache-dir "$T/x4" --retries 2 $FAST org/tiny model.safetensors >/dev/null 2>"$T/err"; rc=$?
check "captive portal page: exit 1" [ $rc -eq 1 ]
check "captive portal page: hint" grep -q "HTML page: a proxy or captive portal" "$T/err"
check "captive portal page: nothing cached" [ ! -e "$T/x4/models--org--tiny/snapshots/$MAIN/model.safetensors" ]

# ------------------------------------------------------------------ chunked (ranged parallel) downloads
B="$T/repos/models/org/big/main/big.safetensors"
SHA_BIG=$(sha256sum "$B" | cut -d' ' -f1)
CH="--chunk-min 1M --chunk-size 1M -c 4"
hub_reset
out=$("$F" --cache-dir "$T/k1" $CH org/big big.safetensors 2>/dev/null)
check "chunked: content" cmp -s "$B" "$out"
check "chunked: ranged requests" [ "$(hub_count '"range": "bytes=[0-9]+-[0-9]+", "status": 206')" -ge 6 ]
check "chunked: no map, no partial left" [ -z "$(find "$T/k1" -name '*.map' -o -name '*.incomplete')" ]
hub_reset
hub_fault kind=drop where=cdn arg=300000 count=3
out=$("$F" --cache-dir "$T/k2" $CH $FAST org/big big.safetensors 2>/dev/null)
check "chunked + dropped connections" cmp -s "$B" "$out"
hub_reset
hub_fault kind=norange where=cdn count=-1
out=$("$F" --cache-dir "$T/k3" $CH org/big big.safetensors 2>"$T/err")
check "chunked, server ignores Range: falls back" cmp -s "$B" "$out"
hub_reset
hub_fault kind=corrupt where=cdn count=1
out=$("$F" --cache-dir "$T/k4" $CH org/big big.safetensors 2>/dev/null)
check "chunked + one corrupt chunk: verified in the end" cmp -s "$B" "$out"
# kill a chunked download, resume from the chunk map
hub_reset
hub_fault kind=slow where=cdn arg=0.05 count=-1
"$FX" --cache-dir "$T/k5" $CH org/big big.safetensors >/dev/null 2>&1 &
pid=$!
sleep 1.2
kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
K5="$T/k5/models--org--big"
check "chunked kill: chunk map kept" [ -f "$K5/blobs/$SHA_BIG.chunked.map" ]
check "chunked kill: partial not under Python's resumable name" [ ! -e "$K5/blobs/$SHA_BIG.incomplete" ]
hub_reset
out=$("$F" --cache-dir "$T/k5" $CH org/big big.safetensors 2>"$T/err")
check "chunked resume: content" cmp -s "$B" "$out"
got=$(hub_log | python3 -c 'import json,sys; print(sum(json.loads(l).get("bytes") or 0 for l in sys.stdin if "\"cdn\"" in l))')
check "chunked resume: fewer bytes than the file" [ "$got" -lt 6000000 ]

# a contiguous partial (e.g. left by Python <= 1.17) continued with chunks
K6="$T/k6/models--org--big"
mkdir -p "$K6/blobs"
head -c 2500000 "$B" >"$K6/blobs/$SHA_BIG.incomplete"
hub_reset
out=$("$F" --cache-dir "$T/k6" $CH org/big big.safetensors 2>/dev/null)
check "contiguous partial + chunks: content" cmp -s "$B" "$out"
got=$(hub_log | python3 -c 'import json,sys; print(sum(json.loads(l).get("bytes") or 0 for l in sys.stdin if "\"cdn\"" in l))')
check "contiguous partial + chunks: only the rest fetched" [ "$got" -le 4000000 ]

# ------------------------------------------------------------------ concurrency
hub_reset
hub_fault kind=slow where=cdn arg=0.005 count=-1
"$F" --cache-dir "$T/cc" org/tiny >"$T/o1" 2>"$T/e1" &
p1=$!
"$F" --cache-dir "$T/cc" org/tiny >"$T/o2" 2>"$T/e2" &
p2=$!
wait $p1; r1=$?
wait $p2; r2=$?
hub_reset
check "concurrent: both exit 0" [ $r1 -eq 0 ] && [ $r2 -eq 0 ]
check "concurrent: same output" cmp -s "$T/o1" "$T/o2"
check "concurrent: cache verified" hub_verify_snapshots "$T/cc/models--org--tiny"
check "concurrent: no partial left" [ -z "$(find "$T/cc" -name '*.incomplete*')" ]
check "concurrent: refs intact" [ "$(cat "$T/cc/models--org--tiny/refs/main")" = "$MAIN" ]
"$F" -j 1 --cache-dir "$T/j1" org/tiny >/dev/null 2>&1
check "-j 1" hub_verify_snapshots "$T/j1/models--org--tiny"

# a lock held by another process: wait for it, or give up after --lock-timeout
LK="$T/lk"
mkdir -p "$LK/.locks/models--org--tiny"
flock "$LK/.locks/models--org--tiny/$SHA_MODEL.lock" sleep 2 &
fl=$!
sleep 0.3
"$F" --cache-dir "$LK" --lock-timeout 0.5 org/tiny model.safetensors >/dev/null 2>"$T/err"; rc=$?
check "--lock-timeout: exit 1" [ $rc -eq 1 ]
check "--lock-timeout: names the lock" grep -q "timed out after 0.5 s waiting for lock .*$SHA_MODEL.lock" "$T/err"
"$F" --cache-dir "$LK" org/tiny model.safetensors >/dev/null 2>"$T/err"; rc=$?
check "lock released by the other process: exit 0" [ $rc -eq 0 ]
wait $fl

# HF_HUB_DISABLE_SYMLINKS: real files in snapshots/, blobs kept
out=$(HF_HUB_DISABLE_SYMLINKS=1 "$F" --cache-dir "$T/ns" org/tiny 2>/dev/null)
check "no symlinks: regular files" [ -f "$out/model.safetensors" ] && [ ! -L "$out/model.safetensors" ] && [ ! -L "$out/sub/dir/nested.txt" ]
check "no symlinks: content" cmp -s "$SRC/model.safetensors" "$out/model.safetensors"
check "no symlinks: blob kept" [ -f "$T/ns/models--org--tiny/blobs/$SHA_MODEL" ]

# ------------------------------------------------------------------ disk full
MNT="$T/small"
mkdir -p "$MNT"
if mount -t tmpfs -o size=1m tmpfs "$MNT" 2>/dev/null; then
	"$F" --cache-dir "$MNT" -j 1 $FAST org/tiny >/dev/null 2>"$T/err"; rc=$?
	check "ENOSPC: exit 1" [ $rc -eq 1 ]
	check "ENOSPC: message" grep -qi "no space left" "$T/err"
	check "ENOSPC: nothing half-written in snapshots" hub_verify_snapshots "$MNT/models--org--tiny"
	check "ENOSPC: partial removed" [ -z "$(find "$MNT" -name '*.incomplete*')" ]
	check "ENOSPC: small files still there" [ -f "$MNT/models--org--tiny/snapshots/$MAIN/config.json" ]
	umount "$MNT" && MNT=
else
	echo "skipping ENOSPC test: cannot mount a tmpfs"
fi
# RLIMIT_FSIZE: writes fail with EFBIG; the cache stays consistent
(trap '' XFSZ; ulimit -f 1024; exec "$F" --cache-dir "$T/fs" $FAST org/tiny) >/dev/null 2>"$T/err"; rc=$?
check "RLIMIT_FSIZE: exit 1" [ $rc -eq 1 ]
check "RLIMIT_FSIZE: message names the file" grep -q "model.safetensors" "$T/err"
check "RLIMIT_FSIZE: snapshots verified" hub_verify_snapshots "$T/fs/models--org--tiny"

# ------------------------------------------------------------------ local dir
L="$T/local"
out=$("$F" --local-dir "$L" org/tiny 2>/dev/null)
check "--local-dir: prints the dir" [ "$out" = "$(cd "$L" && pwd -P)" ]
check "--local-dir: real files" [ -f "$L/model.safetensors" ] && [ ! -L "$L/model.safetensors" ] && cmp -s "$SRC/model.safetensors" "$L/model.safetensors"
check "--local-dir: nested" cmp -s "$SRC/sub/dir/nested.txt" "$L/sub/dir/nested.txt"
check "--local-dir: metadata" [ "$(sed -n 1p "$L/.cache/huggingface/download/config.json.metadata")" = "$MAIN" ]
check "--local-dir: .gitignore" [ "$(cat "$L/.cache/huggingface/.gitignore")" = "*" ]
hub_reset
"$F" --local-dir "$L" org/tiny >/dev/null 2>&1
check "--local-dir: second run downloads nothing" [ "$(hub_count '"GET".*(resolve|cdn)')" -eq 0 ]
rm -rf "$L/.cache"
hub_reset
"$F" --local-dir "$L" org/tiny >/dev/null 2>&1
check "--local-dir: files without metadata reused by hash" [ "$(hub_count '"GET".*(resolve|cdn)')" -eq 0 ]
check "--local-dir: metadata written again" [ -f "$L/.cache/huggingface/download/model.safetensors.metadata" ]

# ------------------------------------------------------------------ progress
"$F" --cache-dir "$T/p1" org/tiny >/dev/null 2>"$T/err"
check "no TTY: no progress" [ ! -s "$T/err" ]
HF_HUB_DISABLE_PROGRESS_BARS=0 "$F" --cache-dir "$T/p2" org/tiny >/dev/null 2>"$T/err"
check "forced progress bar shows bytes and ETA" grep -q "ETA" "$T/err"
HF_HUB_DISABLE_PROGRESS_BARS=0 "$F" -q --cache-dir "$T/p3" org/tiny >/dev/null 2>"$T/err"
check "-q: silent" [ ! -s "$T/err" ]

# ------------------------------------------------------------------ HTTPS
if openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 \
	-addext subjectAltName=IP:127.0.0.1 -keyout "$T/key.pem" -out "$T/cert.pem" >/dev/null 2>&1; then
	python3 "$LQ_ROOT/tests/hubserver.py" --repos "$T/repos" --port-file "$T/tlsports" \
		--tls "$T/cert.pem" "$T/key.pem" >"$T/tls.log" 2>&1 &
	TLS_PID=$!
	i=0
	while [ ! -s "$T/tlsports" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
	read -r TP TC <"$T/tlsports"
	out=$(SSL_CERT_FILE="$T/cert.pem" HF_TOKEN=hf_good HF_ENDPOINT="https://127.0.0.1:$TP" \
		"$F" --cache-dir "$T/tlsc" org/tiny 2>"$T/err")
	check "https: download with SSL_CERT_FILE" cmp -s "$SRC/model.safetensors" "$out/model.safetensors" || cat "$T/err" >&2
	curl -sk "https://127.0.0.1:$TP/_test/log" >"$T/tlsreq"
	check "https: token sent to the hub" grep -q '"port": "hub".*Bearer hf_good' "$T/tlsreq"
	check "https: token kept from the CDN" [ "$(grep -c '"port": "cdn".*Bearer' "$T/tlsreq")" -eq 0 ]
	HF_ENDPOINT="https://127.0.0.1:$TP" "$F" --cache-dir "$T/tlsc2" --retries 0 org/tiny >/dev/null 2>"$T/err"; rc=$?
	check "https: unknown CA refused" [ $rc -eq 1 ] && grep -qi "certificate" "$T/err"
	kill $TLS_PID 2>/dev/null; wait $TLS_PID 2>/dev/null; TLS_PID=
else
	echo "skipping HTTPS tests: cannot make a certificate with openssl"
fi

# ------------------------------------------------------------------ man page EXAMPLES
R2="$T/repos/models"
mkdir -p "$R2/Qwen/Qwen2-7B-Instruct/main" "$R2/meta-llama/Llama-3.1-8B-Instruct/main" \
	"$T/repos/datasets/org/name/main"
echo '{}' >"$R2/Qwen/Qwen2-7B-Instruct/repo.json"
cp "$SRC/config.json" "$SRC/model.safetensors" "$SRC/tokenizer.json" "$R2/Qwen/Qwen2-7B-Instruct/main/"
echo 'license' >"$R2/Qwen/Qwen2-7B-Instruct/main/LICENSE"
echo '{"gated": "manual", "access": ["hf_good"]}' >"$R2/meta-llama/Llama-3.1-8B-Instruct/repo.json"
cp "$SRC/config.json" "$R2/meta-llama/Llama-3.1-8B-Instruct/main/"
echo '{}' >"$T/repos/datasets/org/name/repo.json"
echo 'a,b' >"$T/repos/datasets/org/name/main/train.csv"
mkdir -p "$T/ex" && cd "$T/ex" || exit 1
awk '/^\.SH /{ex = ($2 == "EXAMPLES")} ex && /^\.EX/{inb=1; next} ex && /^\.EE/{inb=0; next} ex && inb && /^\$ /' \
	"$LQ_ROOT/man/hf-fetch.1" | sed -e 's/^\$ //' -e 's/\\-/-/g' -e "s/\\\\(aq/'/g" >"$T/examples"
n=0
while IFS= read -r cmd; do
	n=$((n + 1))
	PATH="$T/bin:$PATH" HF_HUB_CACHE="$T/excache" HF_TOKEN=hf_good sh -c "$cmd" >"$T/out" 2>"$T/err"
	rc=$?
	check "man example: $cmd" [ $rc -eq 0 ] && [ -s "$T/out" ] || sed 's/^/  | /' "$T/err" >&2
done <"$T/examples"
check "man examples found" [ $n -ge 4 ]
check "man example --local-dir wrote the file" [ -f "$T/ex/data/train.csv" ]
cd "$T" || exit 1
hub_reset

# progress bar on a real terminal
if script -qec "true" /dev/null >/dev/null 2>&1; then
	script -qec "\"$F\" --cache-dir \"$T/tty\" org/tiny" /dev/null >"$T/tty.out" 2>&1
	check "TTY: progress bar drawn" grep -q "ETA" "$T/tty.out"
	check "TTY: path still printed" grep -q "$T/tty/models--org--tiny/snapshots/$MAIN" "$T/tty.out"
else
	echo "skipping TTY test: script(1) missing"
fi

# ------------------------------------------------------------------ interop with Python huggingface_hub
if python3 -c 'import huggingface_hub' 2>/dev/null; then
	# hf-fetch downloaded $C: Python finds everything offline
	HF_HUB_OFFLINE=1 python3 - "$C" "$MAIN" "$V1" >"$T/py" 2>&1 <<'EOF'
import os, sys
from huggingface_hub import hf_hub_download, snapshot_download, scan_cache_dir
cache, main, v1 = sys.argv[1:4]
files = ["config.json", "tokenizer.json", "model.safetensors", "sub/dir/nested.txt", "a b+c.txt", "empty.txt"]
for f in files:
    p = hf_hub_download("org/tiny", f)
    assert p == os.path.join(cache, "models--org--tiny", "snapshots", main, f), p
p = hf_hub_download("org/tiny", "model.safetensors", revision="v1")
assert main not in p and v1 in p, p
assert snapshot_download("org/tiny") == os.path.join(cache, "models--org--tiny", "snapshots", main)
assert snapshot_download("org/data", repo_type="dataset").endswith("/snapshots/" + os.listdir(os.path.join(cache, "datasets--org--data", "snapshots"))[0])
r = scan_cache_dir()
assert not r.warnings, r.warnings
print("OK", len(r.repos))
EOF
	grep -q '^OK' "$T/py" || cat "$T/py" >&2
	check "python offline finds hf-fetch's files, scan_cache_dir clean" grep -q '^OK' "$T/py"
	if python3 -c 'import transformers' 2>/dev/null; then
		HF_HUB_OFFLINE=1 python3 -c 'from transformers import AutoConfig; c = AutoConfig.from_pretrained("org/tiny"); assert c.hidden_size == 64' >"$T/py" 2>&1
		check "transformers AutoConfig offline" [ $? -eq 0 ] || cat "$T/py" >&2
	else
		echo "skipping transformers check: python package transformers missing"
	fi
	# Python downloads first; hf-fetch reuses its cache with no GET of content
	PYC="$T/pycache"
	HF_HUB_CACHE="$PYC" python3 -c 'from huggingface_hub import snapshot_download; snapshot_download("org/tiny")' >"$T/py" 2>&1
	check "python download from the test hub" [ $? -eq 0 ] || cat "$T/py" >&2
	hub_reset
	out=$("$F" --cache-dir "$PYC" org/tiny 2>/dev/null)
	check "hf-fetch reuses Python's snapshot" [ "$out" = "$PYC/models--org--tiny/snapshots/$MAIN" ]
	check "reuse: no file request" [ "$(hub_count '/resolve/|"port": "cdn"')" -eq 0 ]
	rm -rf "$PYC/models--org--tiny/snapshots"
	hub_reset
	out=$("$F" --cache-dir "$PYC" org/tiny 2>/dev/null)
	check "reuse of Python's blobs: linked" hub_verify_snapshots "$PYC/models--org--tiny"
	check "reuse of Python's blobs: no GET of content" [ "$(hub_count '"GET".*(/resolve/|"port": "cdn")')" -eq 0 ]
	check "reuse of Python's blobs: all files" [ -f "$out/model.safetensors" ] && [ -f "$out/sub/dir/nested.txt" ]
	HF_HUB_CACHE="$PYC" HF_HUB_OFFLINE=1 python3 -c 'from huggingface_hub import scan_cache_dir; r = scan_cache_dir(); assert not r.warnings, r.warnings' 2>"$T/py"
	check "scan_cache_dir clean after mixed use" [ $? -eq 0 ] || cat "$T/py" >&2
	# Python and hf-fetch at the same time on one cache (same locks)
	PYC2="$T/pycache2"
	hub_reset
	hub_fault kind=slow where=cdn arg=0.005 count=-1
	HF_HUB_CACHE="$PYC2" python3 -c 'from huggingface_hub import snapshot_download; snapshot_download("org/tiny")' >"$T/py" 2>&1 &
	pp=$!
	"$F" --cache-dir "$PYC2" org/tiny >/dev/null 2>"$T/err"; r1=$?
	wait $pp; r2=$?
	hub_reset
	check "concurrent with Python: both succeed" [ $r1 -eq 0 ] && [ $r2 -eq 0 ] || cat "$T/py" "$T/err" >&2
	check "concurrent with Python: cache verified" hub_verify_snapshots "$PYC2/models--org--tiny"
	HF_HUB_CACHE="$PYC2" HF_HUB_OFFLINE=1 python3 -c 'from huggingface_hub import scan_cache_dir; r = scan_cache_dir(); assert not r.warnings, r.warnings' 2>"$T/py"
	check "concurrent with Python: scan_cache_dir clean" [ $? -eq 0 ] || cat "$T/py" >&2
else
	echo "skipping Python interop tests: python package huggingface_hub missing"
fi

hub_summary
