#!/bin/sh
# cli_gpu_tools.sh - the GPU diagnostics scripts without a GPU:
# tests/ab-gpu's argument checks, tests/ncu_stalls.py on a synthetic ncu
# source table, and tests/gpu_trace.py on synthetic trace
# files of the layout the GPU_TRACE=1 build writes (the header, then per
# launch, block and stamp a u64 %globaltimer): the timeline columns, older
# five-stamp files, and a clear error for a file with nothing recorded (those
# need numpy).
. "${LQ_ROOT:-.}/tests/lib.sh"
cd "$LQ_ROOT" || exit 1
fails "ab-gpu: no arguments" 2 '^usage: ab-gpu' tests/ab-gpu
fails "ab-gpu: bad round count" 2 "ROUNDS must be a positive integer, not 'x'" tests/ab-gpu /dev/null "$LQ_BUILD" "$LQ_BUILD" x
fails "ab-gpu: unreadable file" 1 "$TMP/none\.lq: cannot read" tests/ab-gpu "$TMP/none.lq" "$LQ_BUILD" "$LQ_BUILD"
fails "ab-gpu: missing build" 1 "$TMP/nobuild/tests/bench_gpu_run: missing" tests/ab-gpu /dev/null "$LQ_BUILD" "$TMP/nobuild"
fails "ab-gpu: a word where -- belongs" 2 '^usage: ab-gpu' tests/ab-gpu /dev/null "$LQ_BUILD" "$LQ_BUILD" 2 --prompt
# two stand-in builds whose bench_gpu_run prints its build, its arguments
# and, as the real one does, the figures on its last line
for b in ba bb; do
	mkdir -p "$TMP/$b/tests"
	printf '#!/bin/sh\necho "warming up"\necho "build %s file $1: decode 2.10 ms/token; args ${2:-none} ${3:-none}"\n' "$b" \
		>"$TMP/$b/tests/bench_gpu_run"
	chmod +x "$TMP/$b/tests/bench_gpu_run"
done
: >"$TMP/f.lq"
check "ab-gpu: two rounds with arguments" tests/ab-gpu "$TMP/f.lq" "$TMP/ba" "$TMP/bb" 2 -- --prompt 4000
printf 'round 1 %s/ba: decode 2.10 ms/token; args --prompt 4000\nround 1 %s/bb: decode 2.10 ms/token; args --prompt 4000\nround 2 %s/ba: decode 2.10 ms/token; args --prompt 4000\nround 2 %s/bb: decode 2.10 ms/token; args --prompt 4000\n' \
	"$TMP" "$TMP" "$TMP" "$TMP" >"$TMP/want"
same "ab-gpu: alternated, arguments passed on" "$TMP/out" "$TMP/want"
check "ab-gpu: arguments without a round count" tests/ab-gpu "$TMP/f.lq" "$TMP/ba" "$TMP/bb" -- --new 8
has "ab-gpu: three rounds by default" "^round 3 $TMP/bb: decode 2\.10 ms/token; args --new 8$" "$TMP/out"
printf '#!/bin/sh\necho "no GPU" >&2\nexit 1\n' >"$TMP/bb/tests/bench_gpu_run"
fails "ab-gpu: a failing run" 1 "ab-gpu: $TMP/bb: bench_gpu_run failed" tests/ab-gpu "$TMP/f.lq" "$TMP/ba" "$TMP/bb"
# tests/ncu_stalls.py on a synthetic source table in ncu's CSV layout (two
# kernels; the second without stall samples)
H='"Address","Source","Warp Stall Sampling (All Samples)","Warp Stall Sampling (Not-issued Samples)","Instructions Executed","stall_long_sb","stall_wait","stall_mio","stall_long_sb (Not Issued)"'
{
	echo '"Kernel Name","void k_a(int)",'
	echo "$H"
	echo '"0x7f0000001000","      LDS R4, [R4]","30","20","1,000","5","15","10","5"'
	echo '"0x7f0000001010","      @!P0  LDG.E.128 R8, desc[UR4][R2.64]","60","60","200","60","0","0","60"'
	echo '"0x7f0000001020","      LDS R5, [R5]","10","5","1,000","0","10","0","0"'
	echo '"0x7f0000001030","      EXIT","0","0","32","0","0","0","0"'
	echo '"Kernel Name","void k_b(int)",'
	echo "$H"
	echo '"0x7f0000002000","      EXIT","0","0","32","0","0","0","0"'
} >"$TMP/src.csv"
check "ncu_stalls: two kernels" python3 tests/ncu_stalls.py "$TMP/src.csv" --top 2
has "ncu_stalls: totals" '^stall samples 100, instructions executed 2232$' "$TMP/out"
has "ncu_stalls: reasons summed" '^  long_sb +65 +65\.0%$' "$TMP/out"
has "ncu_stalls: wait" '^  wait +25 +25\.0%$' "$TMP/out"
has "ncu_stalls: opcode without its predicate" '^  LDG\.E\.128 +60 +60\.0% +200$' "$TMP/out"
has "ncu_stalls: opcodes summed" '^  LDS +40 +40\.0% +2000$' "$TMP/out"
has "ncu_stalls: top instruction" '^ +60 001010  @!P0  LDG\.E\.128 R8, desc\[UR4\]\[R2\.64\]  \[long_sb 60\]$' "$TMP/out"
has "ncu_stalls: its reasons, largest first" '^ +30 001000  LDS R4, \[R4\]  \[wait 15, mio 10, long_sb 5\]$' "$TMP/out"
if grep -q "LDS R5" "$TMP/out"; then bad "ncu_stalls: --top 2 printed a third instruction"; else ok; fi
has "ncu_stalls: the second kernel" '^kernel: void k_b\(int\)$' "$TMP/out"
has "ncu_stalls: no samples said" '^no stall samples' "$TMP/out"
printf 'a,b\n1,2\n' >"$TMP/notsrc.csv"
fails "ncu_stalls: not a source table" 1 'notsrc\.csv: no source table' python3 tests/ncu_stalls.py "$TMP/notsrc.csv"
fails "ncu_stalls: missing file" 1 'none\.csv: cannot read' python3 tests/ncu_stalls.py "$TMP/none.csv"
fails "ncu_stalls: bad --top" 1 '^usage: ncu_stalls\.py' python3 tests/ncu_stalls.py "$TMP/src.csv" --top 0
fails "ncu_stalls: no arguments" 1 '^usage: ncu_stalls\.py' python3 tests/ncu_stalls.py
if ! have_py numpy; then
	echo "cli_gpu_tools.sh: gpu_trace.py checks skipped (needs python3 with numpy)"
	finish
	exit
fi
# launch k at 1 ms + 10 us * k; block j enters at +100 ns * j, issues its
# loads 200 ns and has its table 1000 ns after entering, is released at
# +1500 + 20 * j, stages x 500 ns later and exits at +8000 + 100 * j
python3 - "$TMP" <<'PY' || bad "writing the synthetic trace files"
import sys
import numpy as np
d = sys.argv[1]
for ev, name in ((7, "tc7.bin"), (6, "tc6.bin"), (5, "tc5.bin"), (6, "empty.bin")):
    a = np.zeros((4, 4, ev), dtype=np.uint64)
    if name != "empty.bin":
        for k in range(4):
            t = 1000000 + 10000 * k
            for j in range(4):
                st = [t + 100 * j, t + 100 * j + 200, t + 100 * j + 1000, t + 1500 + 20 * j,
                      t + 1500 + 20 * j + 500, t + 8000 + 100 * j]
                a[k, j] = st + [j] if ev == 7 else st if ev == 6 else st[:1] + st[2:]  # %smid: j
    with open(d + "/" + name, "wb") as f:
        f.write(np.array([4, 4, ev, 4], dtype=np.uint32).tobytes() + a.tobytes())
# one layer's RoPE (kind 1) after launch 0's last exit (1,008,300 ns), then
# three attention blocks (kind 2): two on SM 0 ending at 1,009,700, the
# merging one on SM 1 ending at 1,010,000; launch 1 is the o GEMV, its
# blocks j on SM j entering at 1,010,000 + 100 j
K = 0x7000
rows = [[K, 0, 1008400, 1008500, 1008900, 0, 0, 1]]
for blk, sm, merged in ((0, 0, 0), (1, 0, 0), (2, 1, 1010000)):
    rows.append([K, blk | sm << 32, 1009000, 1009100, 1009500, 1009700, merged, 2])
with open(d + "/kt.bin", "wb") as f:
    f.write(np.array([len(rows)], dtype=np.uint32).tobytes() + np.array(rows, dtype=np.uint64).tobytes())
PY
check "six stamps" python3 tests/gpu_trace.py "$TMP/tc6.bin"
has "four launches" '^4 GEMV launches, 38\.3 us' "$TMP/out"
has "second launch's row" '^ +1 +1\.70 +1\.85 +0\.20 +1\.00 +3\.00 +3\.20 +0\.53 +6\.65 +6\.80 +10\.00$' "$TMP/out"
check "with %smid" python3 tests/gpu_trace.py "$TMP/tc7.bin"
has "with %smid: the same row" '^ +1 +1\.70 +1\.85 +0\.20 +1\.00 +3\.00 +3\.20 +0\.53 +6\.65 +6\.80 +10\.00$' "$TMP/out"
check "placement" python3 tests/gpu_trace.py "$TMP/tc7.bin" "$TMP/kt.bin"
has "placement: RoPE released after the q/k/v GEMV" '^  rope release +0\.20 ' "$TMP/out"
has "placement: SMs used" '^  SMs with attention blocks +2\.00 ' "$TMP/out"
has "placement: busiest SM" '^  attention blocks on the busiest SM +2\.00 ' "$TMP/out"
has "placement: o blocks sharing an SM" '^  o GEMV blocks on SMs with attention +2\.00 ' "$TMP/out"
has "placement: median gap" '^  o entry - last attention end there, median us +0\.20 ' "$TMP/out"
has "placement: largest gap" '^  o entry - last attention end there, max us +0\.30 ' "$TMP/out"
check "no %smid, no placement" python3 tests/gpu_trace.py "$TMP/tc6.bin" "$TMP/kt.bin"
if grep -q "SMs with attention" "$TMP/out"; then bad "placement printed without %smid"; else ok; fi
check "five stamps" python3 tests/gpu_trace.py "$TMP/tc5.bin"
has "five stamps: no issued column" '^ +1 +1\.70 +1\.85 +nan +1\.00 +3\.00 +3\.20 +0\.53 +6\.65 +6\.80 +10\.00$' "$TMP/out"
fails "nothing recorded" 1 'empty\.bin: no GEMV launches recorded' python3 tests/gpu_trace.py "$TMP/empty.bin"
fails "no arguments" 1 'usage: gpu_trace\.py' python3 tests/gpu_trace.py
finish
