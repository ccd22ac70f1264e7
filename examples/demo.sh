#!/bin/sh
# demo.sh BUILD - the README's first command (make demo): quantize and
# inspect a small checkpoint made by tests/gen_checkpoint (a Llama-shaped
# model with random weights; a trained model replaces it later).
set -e
BUILD=${1:-build}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PATH="$ROOT/$BUILD/bin:$PATH"
OUT="$ROOT/examples/out"
mkdir -p "$OUT"
cd "$OUT"
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }
[ -d model ] || "$ROOT/$BUILD/tests/gen_checkpoint" --preset small --shards 2 model
step quantize -f -o model-nf4.lq model
step quantize -f -t int8 -o model-int8.lq model
step inspect model-nf4.lq
step inspect --tensors model-nf4.lq | head -12
step inspect --verify model-int8.lq
for f in model-nf4.lq model-int8.lq; do
	step inspect --stats model.layers.0.mlp.down_proj.weight --source model "$f"
done
printf '\nfootprint (bytes, as transformers get_memory_footprint): bf16 %s, int8 %s, nf4 %s\n' \
	"$(inspect --json model | jq .footprint.transformers)" \
	"$(inspect --json model-int8.lq | jq .footprint.transformers)" \
	"$(inspect --json model-nf4.lq | jq .footprint.transformers)"
