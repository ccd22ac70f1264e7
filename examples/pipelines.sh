#!/bin/sh
# pipelines.sh [MODEL] - the libquant tools in shell pipelines.
#
#   sh examples/pipelines.sh                  the embedded model (examples/tiny/model), offline
#   sh examples/pipelines.sh org/name         a Hub repo, fetched with hf-fetch (HF_ENDPOINT,
#                                             HF_HOME and HF_TOKEN are honoured)
#   sh examples/pipelines.sh path/to/model    any checkpoint directory
#
# Environment: BIN (directory of the tools; default build/bin, else PATH), OUT (where the .lq
# files go; default examples/out/pipelines), N (new tokens per answer; default 16).
# Needs jq. Every step prints the pipeline it runs, then its output.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/build/bin}
[ -d "$BIN" ] && PATH="$BIN:$PATH"
OUT=${OUT:-$ROOT/examples/out/pipelines}
N=${N:-16}
MODEL=${1:-$ROOT/examples/tiny/model}
command -v jq >/dev/null || { echo "pipelines.sh: jq is needed (apt-get install jq)" >&2; exit 1; }
mkdir -p "$OUT"

step() { printf '\n## %s\n' "$*"; }

# ---- 1. $(hf-fetch ...) into quantize
if [ -d "$MODEL" ]; then
	SNAP=$MODEL
	step "quantize -o model-nf4.lq $MODEL"
	quantize -q -f -o "$OUT/model-nf4.lq" "$SNAP"
else
	step "hf-fetch $MODEL config.json | jq (one file, without the weights)"
	jq -r '"\(.architectures[0]): \(.num_hidden_layers) layers, hidden \(.hidden_size), vocab \(.vocab_size)"' \
		"$(hf-fetch -q "$MODEL" config.json)"
	# only what quantize needs (not the .bin, .gguf or .onnx copies many repos also hold)
	step "quantize -o model-nf4.lq \"\$(hf-fetch -i '*.json' -i '*.safetensors' -i tokenizer.model $MODEL)\""
	quantize -q -f -o "$OUT/model-nf4.lq" \
		"$(hf-fetch -q -i '*.json' -i '*.safetensors' -i tokenizer.model "$MODEL")"
	# a second hf-fetch is answered from the cache
	SNAP=$(hf-fetch -q -i '*.json' -i '*.safetensors' -i tokenizer.model "$MODEL")
	echo "snapshot: $SNAP"
fi
F=$OUT/model-nf4.lq
quantize -q -f -t int8 -o "$OUT/model-int8.lq" "$SNAP"
step "inspect --verify"
for f in "$F" "$OUT/model-int8.lq"; do inspect --verify "$f"; done

# ---- 2. inspect --json | jq
step "inspect --json model-nf4.lq | jq .footprint"
inspect --json "$F" | jq -c .footprint

step "the five biggest tensors: inspect --json --tensors | jq 'sort_by(-.bytes)'"
inspect --json --tensors "$F" |
	jq -r '.tensors | sort_by(-.bytes, .name) | .[:5][] | "\(.bytes)\t\(.storage)\t\(.shape | map(tostring) | join("x"))\t\(.name)"'

step "tensors and bytes per storage type: jq 'group_by(.storage)'"
inspect --json --tensors "$F" |
	jq -r '.tensors | group_by(.storage)[] | "\(.[0].storage)\t\(length) tensors\t\(map(.bytes) | add) bytes"'

step "footprint of NF4 vs INT8 files, one TSV line each"
for f in "$F" "$OUT/model-int8.lq"; do
	inspect --json "$f" | jq -r '[.quantization.type, .size, .footprint.transformers, .footprint.resident] | @tsv'
done

# ---- 3. inspect --estimate for several types, from the checkpoint's headers alone
step "for t in nf4 fp4 int8 none; do inspect --estimate --json -t \$t CHECKPOINT; done"
printf 'type\tlq_size\tfootprint\tresident\n'
for t in nf4 fp4 int8 none; do
	inspect --estimate --json -t "$t" "$SNAP" |
		jq -r --arg t "$t" '[$t, .lq_size, .footprint.transformers, .footprint.resident] | @tsv'
done

# ---- 4. batch generation: jq builds the requests, run --jsonl answers them, jq reads the answers
step "jq -n '...| {prompt, max_new_tokens}' | run --jsonl model-nf4.lq | jq -r .text"
jq -nc --argjson n "$N" '
	["In the beginning", "The LORD is my shepherd", "Blessed are the meek"][] |
	{prompt: ., max_new_tokens: $n}' |
	run --jsonl "$F" |
	jq -r '"[\(.prompt_tokens)+\(.completion_tokens) tokens, \(.finish_reason)] \(.text)"'

step "a conversation with a system message, sampled with a seed"
jq -nc --argjson n "$N" '{messages: [{role: "system", content: "You are a helpful assistant."},
	{role: "user", content: "Tell me of Moses."}], temperature: 0.8, seed: 7, max_new_tokens: $n}' |
	run --jsonl "$F" | jq -r .text

# ---- 5. tokenization round trip
TEXT="In the beginning God created the heaven and the earth."
step "printf '$TEXT' | run --tokenize --no-special | run --detokenize"
ids=$(printf '%s' "$TEXT" | run --tokenize --no-special "$SNAP")
echo "$ids"
back=$(echo "$ids" | run --detokenize "$SNAP")
echo "$back"
[ "$back" = "$TEXT" ] && echo "round trip: identical" || echo "round trip: DIFFERENT"

step "line by line: jq -R . | run --tokenize --jsonl | run --detokenize --jsonl | jq -r ."
head -n 5 "$ROOT/examples/tiny/heldout.txt" >"$OUT/lines.txt"
jq -R . "$OUT/lines.txt" | run --tokenize --jsonl --no-special "$SNAP" >"$OUT/ids.jsonl"
jq -r 'length' "$OUT/ids.jsonl" | paste -sd' ' | sed 's/^/tokens per line: /'
run --detokenize --jsonl "$SNAP" <"$OUT/ids.jsonl" | jq -r . >"$OUT/back.txt"
cmp -s "$OUT/lines.txt" "$OUT/back.txt" && echo "round trip of $(wc -l <"$OUT/lines.txt") lines: identical" ||
	diff "$OUT/lines.txt" "$OUT/back.txt" || :
