#!/bin/sh
# demo.sh BUILD - the README's first command (make demo): the whole job on
# the embedded model (examples/tiny: a 6.5M-parameter Llama trained on the
# King James Bible): quantize to NF4 (double quant) and INT8, show the layer
# tree and the footprints, generate an answer, and compare perplexities.
set -e
BUILD=${1:-build}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PATH="$ROOT/$BUILD/bin:$PATH"
MODEL="$ROOT/examples/tiny/model"
OUT="$ROOT/examples/out"
mkdir -p "$OUT"
cd "$OUT"
bold() { if [ -t 1 ]; then printf '\n\033[1m%s\033[0m\n' "$*"; else printf '\n%s\n' "$*"; fi; }
step() { bold "\$ $*"; "$@"; }
step quantize -f -o tiny-nf4.lq "$MODEL"
step quantize -f -t int8 -o tiny-int8.lq "$MODEL"
quantize -q -f -t none -o tiny-bf16.lq "$MODEL"
step inspect --tree tiny-nf4.lq
step inspect tiny-nf4.lq
bold "footprint (bytes):"
printf '%-6s %14s %14s %12s\n' type get_memory_footprint resident "file size"
for t in bf16 int8 nf4; do
	printf '%-6s %14s %14s %12s\n' $t "$(inspect --json tiny-$t.lq | jq .footprint.transformers)" \
		"$(inspect --json tiny-$t.lq | jq .footprint.resident)" "$(wc -c < tiny-$t.lq)"
done
bold "\$ run -n 80 -s 'You are a helpful assistant.' -p 'Read me Psalms 23.' tiny-nf4.lq"
run -n 80 -s "You are a helpful assistant." -p "Read me Psalms 23." tiny-nf4.lq
head -c 12000 "$ROOT/examples/tiny/heldout.txt" > heldout-part.txt
bold "perplexity on the held-out text (first 12 kB; run --ppl heldout-part.txt MODEL):"
for t in bf16 int8 nf4; do
	printf '%-6s %s\n' $t "$(run --ppl heldout-part.txt tiny-$t.lq 2>/dev/null | tail -n 1)"
done
