#!/bin/sh
# cli_examples.sh - examples/Makefile and examples/pipelines.sh, offline on the embedded model
# and against the loopback test hub (tests/hubserver.py) serving it as libquant/tiny-kjv.
# Needs make and jq; the hub part needs python3 and curl (skipped if missing).
: "${LQ_ROOT:=$(cd "$(dirname "$0")/.." && pwd)}"
: "${LQ_BIN:=$LQ_ROOT/build/bin}"
. "$LQ_ROOT/tests/hub_lib.sh"

# the outer make's flags (jobserver, variables, -n...) must not reach the examples' make
unset MAKEFLAGS MFLAGS MAKELEVEL MAKEOVERRIDES

if ! command -v jq >/dev/null || ! command -v make >/dev/null; then
	echo "skipping cli_examples: jq or make missing"
	echo "0 passed, 0 failed"
	exit 0
fi

T=$(mktemp -d "${TMPDIR:-/tmp}/examples-test.XXXXXX")
cleanup() {
	hub_stop
	[ -n "$MK_PID" ] && kill -s KILL -- "-$MK_PID" 2>/dev/null
	rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

EX=$LQ_ROOT/examples
PPL=1200 # bytes of held-out text scored (the whole file takes tens of seconds)
mk() { # OUTDIR [make args...]: make in examples/ with the tools under test
	_o=$1; shift
	timeout -k 5 300 make -C "$EX" --no-print-directory BIN="$LQ_BIN" OUT="$_o" PPL_BYTES=$PPL "$@"
}
# the report of OUTDIR NAME is complete: 3 rows, all verified, perplexities near the reference
report_ok() { # OUTDIR NAME
	_t=$1/$2.report.tsv
	[ "$(wc -l <"$_t")" -eq 4 ] || return 1
	[ "$(cut -f1 "$_t" | paste -sd' ')" = "type bf16 nf4 int8" ] || return 1
	[ "$(cut -f7 "$_t" | grep -c '^ok$')" -eq 3 ] || return 1
	awk -F '\t' 'NR > 1 && !($8 > 5 && $8 < 60) { exit 1 }' "$_t"
}
mtime() { stat -c %Y.%y "$1"; }

# ------------------------------------------------------------------ make -j4 from clean
O=$T/o1
mk "$O" -j4 >"$T/log" 2>&1; rc=$?
check "make -j4 from clean: exit 0" [ $rc -eq 0 ]
[ $rc -eq 0 ] || cat "$T/log" >&2
for t in bf16 nf4 int8; do
	check "$t.lq made" [ -s "$O/tiny.$t.lq" ]
	check "$t.lq verifies" "$LQ_BIN/inspect" --verify "$O/tiny.$t.lq" >/dev/null
	check "$t verification stamp" grep -q ' 0 failed$' "$O/tiny.$t.lq.verified"
done
check "nf4 file is NF4, block 64" [ "$(jq -c '[.quantization.type, .quantization.block_size]' "$O/tiny.nf4.lq.json")" = '["nf4",64]' ]
check "int8 file is INT8" [ "$(jq -r .quantization.type "$O/tiny.int8.lq.json")" = int8 ]
check "snapshot records the embedded model" [ "$(cat "$O/tiny.snapshot")" -ef "$EX/tiny/model" ]
check "report.tsv complete" report_ok "$O" tiny
check "report.md has the table" [ "$(grep -c '^| \(bf16\|nf4\|int8\) | [0-9]* | [0-9]* | [0-9]* | 6524160 | 56 | ok | [0-9.]* | `[^`]*` |$' "$O/tiny.report.md")" -eq 3 ]
check "report: quantization column" [ "$(cut -f9 "$O/tiny.report.tsv" | paste -sd/)" = "quantization/none/nf4, block 64, double quant/int8, block 64, double quant" ]
check "report: nf4 file smaller than int8, int8 smaller than bf16" \
	awk -F '\t' 'NR > 1 { s[$1] = $2 } END { exit !(s["nf4"] < s["int8"] && s["int8"] < s["bf16"]) }' "$O/tiny.report.tsv"
check "held-out text cut to PPL_BYTES" [ "$(wc -c <"$O/heldout.txt")" -eq $PPL ]
check "no temporaries left" [ -z "$(find "$O" -name '*.tmp*')" ]

# ------------------------------------------------------------------ second make does nothing
mk "$O" -q; check "make -q after a build: up to date" [ $? -eq 0 ]
mk "$O" >"$T/log" 2>&1
check "second make: nothing to be done" grep -q "Nothing to be done" "$T/log"
mk "$O" -n >"$T/log" 2>&1
check "make -n: no command" [ -z "$(grep -v 'Nothing to be done' "$T/log")" ]
mk "$O" -q FORMAT=tsv; check "FORMAT=tsv: already built" [ $? -eq 0 ]

# ------------------------------------------------------------------ changing an option rebuilds what it affects
bf16_before=$(mtime "$O/tiny.bf16.lq")
mk "$O" BLOCK=128 >"$T/log" 2>&1; rc=$?
check "BLOCK=128: exit 0" [ $rc -eq 0 ]
check "BLOCK=128: nf4 rebuilt with -b 128" grep -q 'quantize .*-t nf4 -b 128 .*tiny.nf4.lq' "$T/log"
check "BLOCK=128: int8 rebuilt with -b 128" grep -q 'quantize .*-t int8 -b 128 .*tiny.int8.lq' "$T/log"
check "BLOCK=128: bf16 not rebuilt" [ "$(grep -c 'quantize .*-t none' "$T/log")" -eq 0 ]
check "BLOCK=128: bf16 file untouched" [ "$(mtime "$O/tiny.bf16.lq")" = "$bf16_before" ]
check "BLOCK=128: files say block 128" [ "$(jq .quantization.block_size "$O/tiny.nf4.lq.json" "$O/tiny.int8.lq.json" | paste -sd' ')" = "128 128" ]
check "BLOCK=128: report rebuilt" report_ok "$O" tiny
mk "$O" -q BLOCK=128; check "BLOCK=128 again: up to date" [ $? -eq 0 ]
mk "$O" -q; check "back to BLOCK=64: out of date" [ $? -eq 1 ]
mk "$O" >"$T/log" 2>&1
int8_before=$(mtime "$O/tiny.int8.lq")
mk "$O" NF4_FLAGS=--no-double-quant >"$T/log" 2>&1; rc=$?
check "NF4_FLAGS: exit 0" [ $rc -eq 0 ]
check "NF4_FLAGS: nf4 rebuilt" grep -q 'quantize .*-t nf4 -b 64 --no-double-quant' "$T/log"
check "NF4_FLAGS: only nf4 quantized" [ "$(grep -c 'quantize ' "$T/log")" -eq 1 ]
check "NF4_FLAGS: int8 untouched" [ "$(mtime "$O/tiny.int8.lq")" = "$int8_before" ]
check "NF4_FLAGS: no double quant in the file" [ "$(jq .quantization.double_quant "$O/tiny.nf4.lq.json")" = false ]
check "NF4_FLAGS: in the report" grep -q '^nf4	.*	nf4, block 64$' "$O/tiny.report.tsv"
mk "$O" -q NF4_FLAGS=--no-double-quant; check "NF4_FLAGS again: up to date" [ $? -eq 0 ]
mk "$O" -q NF4_FLAGS=--no-double-quant PPL_BYTES=1000; check "PPL_BYTES changed: out of date" [ $? -eq 1 ]
mk "$O" NF4_FLAGS=--no-double-quant FORMAT=tsv PPL_BYTES=1000 >"$T/log" 2>&1
check "PPL_BYTES: no quantize, ppl rescored" [ "$(grep -c 'quantize ' "$T/log")" -eq 0 ] && \
	check "PPL_BYTES: three perplexities" [ "$(grep -c 'run --ppl' "$T/log")" -eq 3 ]
check "PPL_BYTES: held-out text cut again" [ "$(wc -c <"$O/heldout.txt")" -eq 1000 ]
mk "$O" NF4_FLAGS=--no-double-quant FORMAT=tsv PPL_BYTES=1000 TYPES=nf4 >"$T/log" 2>&1
check "TYPES=nf4: report rebuilt, nothing else" [ "$(grep -c 'quantize \|run --ppl' "$T/log")" -eq 0 ] && \
	check "TYPES=nf4: two rows" [ "$(cut -f1 "$O/tiny.report.tsv" | paste -sd' ')" = "type bf16 nf4" ]
mk "$O" -q NF4_FLAGS=--no-double-quant FORMAT=tsv PPL_BYTES=1000 TYPES=nf4
check "TYPES=nf4 again: up to date" [ $? -eq 0 ]
mk "$O" PPL_FLAGS="--ctx 0" >"$T/log" 2>&1; rc=$?
check "failing run --ppl: make fails" [ $rc -ne 0 ]
check "failing run --ppl: its message shown" grep -q "run: --ctx: bad number" "$T/log"
check "failing run --ppl: no target, no temporary" [ -z "$(find "$O" -name '*.ppl' -newer "$O/ppl.opts" -o -name '*.tmp*')" ]

# ------------------------------------------------------------------ interrupted make
# a whole make (its process group, as ^C does) is interrupted at several points; what is
# there afterwards is complete, nothing temporary is left, and make then finishes the job.
# A background job of a script has SIGINT ignored: python3 restores it and starts a new
# process group (without python3: setsid, and SIGTERM only)
spawn() { # PIDFILE CMD...: CMD in its own process group, its pid (= the group) in PIDFILE
	if command -v python3 >/dev/null; then
		python3 -c 'import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
os.setsid()
with open(sys.argv[1] + ".t", "w") as f: f.write(str(os.getpid()))
os.rename(sys.argv[1] + ".t", sys.argv[1])
os.execvp(sys.argv[2], sys.argv[2:])' "$@"
	else
		_p=$1; shift
		setsid sh -c 'echo $$ >"$0.t"; mv "$0.t" "$0"; exec "$@"' "$_p" "$@"
	fi
}
group_started() { # PIDFILE: wait for spawn's pid file, MK_PID = the group
	_i=0
	while [ ! -s "$1" ] && [ $_i -lt 100 ]; do sleep 0.05; _i=$((_i + 1)); done
	MK_PID=$(cat "$1")
}
group_gone() { # wait until every process of the group MK_PID has left
	_i=0
	while kill -0 -- "-$MK_PID" 2>/dev/null && [ $_i -lt 200 ]; do sleep 0.05; _i=$((_i + 1)); done
	MK_PID=
}
none_left() { # DESC DIR NAME: no file NAME (a find -name pattern) under DIR
	check "$1" sh -c 'left=$(find "$1" -name "$2" 2>/dev/null)
[ -z "$left" ] || { echo "left: $left" >&2; exit 1; }' sh "$2" "$3"
}
if command -v python3 >/dev/null || command -v setsid >/dev/null; then
	trial=0
	interrupted=0
	for spec in 0.05:INT 0.2:TERM 0.4:INT:-j2 0.7:TERM 1.2:INT; do
		delay=${spec%%:*}; sig=${spec#*:}; jobs=${sig#*:}; sig=${sig%%:*}
		[ "$jobs" = "$sig" ] && jobs=
		command -v python3 >/dev/null || sig=TERM
		trial=$((trial + 1))
		O=$T/int$trial
		rm -f "$T/pid"
		spawn "$T/pid" timeout --foreground -k 5 300 make -C "$EX" --no-print-directory $jobs BIN="$LQ_BIN" \
			OUT="$O" PPL_BYTES=$PPL >"$T/ilog" 2>&1 &
		group_started "$T/pid"
		sleep "$delay"
		kill -s "$sig" -- "-$MK_PID" 2>/dev/null
		wait
		# make may exit before its children have finished their own clean-up
		# (each removes its temporary on the signal): wait for the whole group
		group_gone
		what="$sig after ${delay}s${jobs:+ ($jobs)}"
		[ -e "$O/tiny.report.md" ] || interrupted=$((interrupted + 1))
		[ -n "$DEBUG" ] && { echo "== $spec"; tail -n 2 "$T/ilog"; ls "$O"; } >&2
		bad=0
		for f in "$O"/*.lq; do
			[ -e "$f" ] || continue
			"$LQ_BIN/inspect" --verify "$f" >/dev/null 2>&1 || { bad=1; echo "partial: $f" >&2; }
		done
		for f in "$O"/*.lq.json; do
			[ -e "$f" ] || continue
			jq -e .size "$f" >/dev/null 2>&1 || { bad=1; echo "partial: $f" >&2; }
		done
		for f in "$O"/*.lq.verified "$O"/*.lq.ppl; do
			[ -e "$f" ] || continue
			[ -s "$f" ] || { bad=1; echo "empty: $f" >&2; }
		done
		if [ -e "$O/tiny.report.tsv" ] && ! report_ok "$O" tiny; then bad=1; echo "partial: report.tsv" >&2; fi
		if [ -e "$O/tiny.report.md" ] && [ "$(grep -c ' ok ' "$O/tiny.report.md")" -ne 3 ]; then
			bad=1; echo "partial: report.md" >&2
		fi
		check "interrupt ($what): no partial target" [ $bad -eq 0 ]
		none_left "interrupt ($what): no temporary left" "$O" "*.tmp*"
		mk "$O" >/dev/null 2>&1
		check "interrupt ($what): make then finishes the job" report_ok "$O" tiny
	done
	check "interrupts happened before the end" [ $interrupted -ge 2 ]

	# a second TERM while a recipe cleans up (make passes a TERM on to its children, so a
	# recipe killed with its group may get two): the clean-up still removes the temporary.
	# rm is made slow so that the second signal lands during it.
	mkdir -p "$T/slowrm" "$T/trap2"
	printf '#!/bin/sh\nsleep 0.5\nexec %s "$@"\n' "$(command -v rm)" >"$T/slowrm/rm"
	chmod +x "$T/slowrm/rm"
	rm -f "$T/pid"
	spawn "$T/pid" env PATH="$T/slowrm:$PATH" make -C "$EX" --no-print-directory BIN="$LQ_BIN" \
		OUT="$T/trap2" --eval '$(OUT)/slow: ; @$(tmp) sleep 5 $(commit)' "$T/trap2/slow" >"$T/ilog" 2>&1 &
	group_started "$T/pid"
	_i=0 # the recipe has started when its temporary exists
	while [ -z "$(find "$T/trap2" -name 'slow.tmp.*' 2>/dev/null)" ] && [ $_i -lt 100 ]; do sleep 0.05; _i=$((_i + 1)); done
	kill -s TERM -- "-$MK_PID" 2>/dev/null
	sleep 0.25
	kill -s TERM -- "-$MK_PID" 2>/dev/null
	wait
	group_gone
	none_left "two TERMs: no temporary left" "$T/trap2" "slow*"
else
	echo "skipping the interruption tests: neither python3 nor setsid"
fi

# ------------------------------------------------------------------ pipelines.sh, offline
BIN="$LQ_BIN" OUT="$T/p1" N=6 timeout -k 5 300 sh "$EX/pipelines.sh" >"$T/pout" 2>&1; rc=$?
check "pipelines.sh offline: exit 0" [ $rc -eq 0 ]
[ $rc -eq 0 ] || cat "$T/pout" >&2
check "pipelines: both files verified" [ "$(grep -c ' 0 failed$' "$T/pout")" -eq 2 ]
check "pipelines: footprint via jq" grep -q '^{"transformers":6413056,"resident":6483424}$' "$T/pout"
check "pipelines: biggest tensor is the embedding" grep -q '^4194304	.*	8192x256	model.embed_tokens.weight$' "$T/pout"
check "pipelines: counts per storage" grep -q '^nf4	42 tensors	' "$T/pout"
check "pipelines: estimate for 4 types" [ "$(grep -cE '^(nf4|fp4|int8|none)	[0-9]+	[0-9]+	[0-9]+$' "$T/pout")" -ge 6 ]
check "pipelines: estimated footprint = real footprint" [ "$(grep -c '^nf4	[0-9]*	6413056	6483424$' "$T/pout")" -eq 2 ]
check "pipelines: 3 batch answers" [ "$(grep -c '^\[[0-9]*+6 tokens, length\] ..*' "$T/pout")" -eq 3 ]
check "pipelines: token round trip" grep -q '^round trip: identical$' "$T/pout"
check "pipelines: line round trip" grep -q '^round trip of 5 lines: identical$' "$T/pout"

# ------------------------------------------------------------------ against the test hub
if ! command -v python3 >/dev/null || ! command -v curl >/dev/null; then
	echo "skipping the hub part of cli_examples: python3 or curl missing"
	hub_summary
	exit
fi
R=$T/hub/repos/models/libquant/tiny-kjv
mkdir -p "$R/main"
echo '{}' >"$R/repo.json"
for f in "$EX"/tiny/model/*; do ln -s "$f" "$R/main/"; done
hub_start "$T/hub" || { nok "cannot start the test hub"; hub_summary; exit 1; }
export HF_HOME="$T/hf" HF_HUB_CACHE="$T/hf/hub"
MAIN=$(hub_commit libquant/tiny-kjv main)
SNAP=$HF_HUB_CACHE/models--libquant--tiny-kjv/snapshots/$MAIN

O=$T/o3
mk "$O" -j2 MODEL=libquant/tiny-kjv >"$T/log" 2>&1; rc=$?
check "hub: make MODEL=libquant/tiny-kjv: exit 0" [ $rc -eq 0 ]
[ $rc -eq 0 ] || cat "$T/log" >&2
check "hub: .snapshot holds the snapshot path" [ "$(cat "$O/libquant--tiny-kjv.snapshot")" = "$SNAP" ]
check "hub: weights fetched" cmp -s "$SNAP/model.safetensors" "$EX/tiny/model/model.safetensors"
check "hub: report complete" report_ok "$O" libquant--tiny-kjv
check "hub: report names the repo" grep -q '^# libquant/tiny-kjv$' "$O/libquant--tiny-kjv.report.md"
check "hub: LQ file records the source repo" [ "$(jq -r .source.repo "$O/libquant--tiny-kjv.nf4.lq.json")" = libquant/tiny-kjv ]
"$LQ_BIN/inspect" --json --tensors "$O/libquant--tiny-kjv.nf4.lq" | jq -c '[.tensors[].xxh3]' >"$T/x1"
mk "$T/o4" "$T/o4/tiny.nf4.lq" >/dev/null 2>&1
"$LQ_BIN/inspect" --json --tensors "$T/o4/tiny.nf4.lq" | jq -c '[.tensors[].xxh3]' >"$T/x2"
check "hub: same tensors as from the embedded model" cmp -s "$T/x1" "$T/x2"
hub_reset
mk "$O" MODEL=libquant/tiny-kjv >"$T/log" 2>&1
check "hub: second make: nothing to be done" grep -q "Nothing to be done" "$T/log"
check "hub: second make: no request to the hub" [ "$(hub_log | wc -l)" -eq 0 ]
mk "$O" -q MODEL=libquant/tiny-kjv BLOCK=128; check "hub: BLOCK=128: out of date" [ $? -eq 1 ]
mk "$O" MODEL=libquant/tiny-kjv BLOCK=128 >"$T/log" 2>&1
check "hub: BLOCK=128: rebuilt without fetching" [ "$(grep -c 'hf-fetch' "$T/log")" -eq 0 ] && \
	check "hub: BLOCK=128: nf4 and int8 rebuilt" [ "$(grep -c 'quantize ' "$T/log")" -eq 2 ]

mk "$O" MODEL=libquant/tiny-kjv BLOCK=128 refetch >"$T/log" 2>&1
check "hub: refetch, same commit: unchanged" grep -q '^libquant/tiny-kjv: unchanged$' "$T/log"
mk "$O" -q MODEL=libquant/tiny-kjv BLOCK=128; check "hub: refetch, same commit: still up to date" [ $? -eq 0 ]
echo "# tiny-kjv" >"$R/main/README.md" # a new commit
MAIN2=$(hub_commit libquant/tiny-kjv main)
SNAP=$HF_HUB_CACHE/models--libquant--tiny-kjv/snapshots/$MAIN2
check "hub: README.md made a new commit" [ "$MAIN2" != "$MAIN" ]
mk "$O" MODEL=libquant/tiny-kjv BLOCK=128 refetch >"$T/log" 2>&1
check "hub: refetch, new commit: new snapshot" [ "$(cat "$O/libquant--tiny-kjv.snapshot")" = "$SNAP" ]
mk "$O" MODEL=libquant/tiny-kjv BLOCK=128 >"$T/log" 2>&1
check "hub: new commit: the three files rebuilt" [ "$(grep -c 'quantize ' "$T/log")" -eq 3 ]
check "hub: new commit: report complete" report_ok "$O" libquant--tiny-kjv

mk "$T/o5" MODEL=libquant/missing >"$T/log" 2>&1; rc=$?
check "hub: missing repo: make fails" [ $rc -ne 0 ]
check "hub: missing repo: hf-fetch's message" grep -q "hf-fetch: .*libquant/missing" "$T/log"
check "hub: missing repo: no .snapshot, no temporary" [ -z "$(find "$T/o5" -name '*.snapshot*')" ]

hub_reset
BIN="$LQ_BIN" OUT="$T/p2" N=6 timeout -k 5 300 sh "$EX/pipelines.sh" libquant/tiny-kjv >"$T/pout" 2>&1; rc=$?
check "pipelines.sh libquant/tiny-kjv: exit 0" [ $rc -eq 0 ]
[ $rc -eq 0 ] || cat "$T/pout" >&2
check "pipelines hub: config.json alone via hf-fetch" grep -q '^LlamaForCausalLM: [0-9]* layers, hidden 256, vocab 8192$' "$T/pout"
check "pipelines hub: snapshot from the cache" grep -q "^snapshot: $SNAP\$" "$T/pout"
check "pipelines hub: weights already cached, not fetched again" [ "$(hub_count '"port": "cdn"')" -eq 0 ]
check "pipelines hub: round trips" [ "$(grep -c '^round trip.*identical$' "$T/pout")" -eq 2 ]
check "pipelines hub: 3 batch answers" [ "$(grep -c '^\[[0-9]*+6 tokens, length\] ..*' "$T/pout")" -eq 3 ]

hub_stop
mk "$O" -q MODEL=libquant/tiny-kjv BLOCK=128; check "hub down: still up to date" [ $? -eq 0 ]

hub_summary
