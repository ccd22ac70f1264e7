#!/bin/sh
# cli_tree.sh - inspect --tree / --estimate / footprints through the real
# tools against transformers' own print(model) and get_memory_footprint()
# (fixtures from tests/model_reference.py): for every small fixture config a
# checkpoint with real headers (data as a sparse hole) is quantized to NF4 and
# INT8, and the trees and footprints of the checkpoint and of the .lq files
# must equal the fixtures byte for byte; the published configs (8B-class)
# are checked without quantizing.
. "${LQ_ROOT:-.}/tests/lib.sh"
FX="$LQ_ROOT/tests/fixtures"
G="$LQ_BUILD/tests/gen_model_tree"
command -v jq >/dev/null || { echo "skipping: jq missing"; echo "0 passed, 0 failed"; exit 0; }
ref() { jq -r ".models[\"$1\"].$2" "$FX/model/reference.json"; }
for cfg in "$FX"/model/*.config.json "$FX"/configs/*.json; do
	name=$(basename "$cfg"); name=${name%.config.json}; name=${name%.json}
	[ -f "$FX/model/$name.bf16.txt" ] || continue
	d="$TMP/$name"; mkdir -p "$d"; cp "$cfg" "$d/config.json"
	"$G" -w "$d/model.safetensors" "$cfg" 2>"$TMP/err" || { bad "$name: cannot write checkpoint"; continue; }
	check "$name: tree of the checkpoint" inspect --tree "$d"
	cmp -s "$TMP/out" "$FX/model/$name.bf16.txt" && ok || { bad "$name: bf16 tree differs"; diff "$TMP/out" "$FX/model/$name.bf16.txt" | head -5 >&2; }
	inspect --json "$d" > "$TMP/j" 2>/dev/null
	[ "$(jq .footprint.transformers "$TMP/j")" = "$(ref "$name" bf16)" ] && ok || bad "$name: bf16 footprint $(jq .footprint.transformers "$TMP/j") != $(ref "$name" bf16)"
	[ "$(jq .parameters "$TMP/j")" = "$(ref "$name" num_parameters)" ] && ok || bad "$name: parameter count"
	for t in nf4 int8; do
		inspect --estimate --json -t $t "$d" > "$TMP/e" 2>"$TMP/err"
		[ "$(jq .footprint.transformers "$TMP/e")" = "$(ref "$name" $t)" ] && ok || bad "$name: $t estimate $(jq .footprint.transformers "$TMP/e") != $(ref "$name" $t)"
		size=$(wc -c < "$d/model.safetensors")
		[ "$size" -gt 100000000 ] && continue # 8B-class: no quantizing in the test suite
		check "$name: quantize $t" quantize -q -t $t -o "$d/$t.lq" "$d"
		check "$name: $t tree of the .lq" inspect --tree "$d/$t.lq"
		cmp -s "$TMP/out" "$FX/model/$name.$t.txt" && ok || { bad "$name: $t tree differs"; diff "$TMP/out" "$FX/model/$name.$t.txt" | head -5 >&2; }
		inspect --json "$d/$t.lq" > "$TMP/j"
		[ "$(jq .footprint.transformers "$TMP/j")" = "$(ref "$name" $t)" ] && ok || bad "$name: $t footprint of the .lq"
		est=$(jq .lq_size "$TMP/e") real=$(wc -c < "$d/$t.lq")
		[ "$est" = "$real" ] && ok || bad "$name: $t .lq estimate $est vs $real"
	done
	rm -f "$d/model.safetensors"
done
# --tree --json is JSON with the module classes
d="$TMP/json"; mkdir -p "$d"; cp "$FX/model/llama-small.config.json" "$d/config.json"
"$G" -w "$d/model.safetensors" "$d/config.json"
quantize -q -o "$d/x.lq" "$d"
inspect --tree --json "$d/x.lq" > "$TMP/t.json" && ok || bad "--tree --json"
[ "$(jq -r '.class' "$TMP/t.json")" = LlamaForCausalLM ] && ok || bad "tree json root class"
[ "$(jq -r '[.. | objects | select(.class? == "Linear4bit")] | length' "$TMP/t.json")" -gt 0 ] && ok || bad "tree json Linear4bit"
# errors
mkdir -p "$TMP/bad" && cp "$FX/model/llama-small.config.json" "$TMP/bad/config.json"
sed 's/"hidden_size": *[0-9]*/"hidden_size": 100/' "$FX/model/llama-small.config.json" > "$TMP/bad/config.json"
cp "$d/model.safetensors" "$TMP/bad/"
fails "shape mismatch" 1 "tensor '.*': shape \[.*\] does not match the expected" quantize -q -o "$TMP/bad.lq" "$TMP/bad"
absent "no output" "$TMP/bad.lq"
fails "tree without config" 1 "no config.json" inspect --tree "$d/model.safetensors"
fails "estimate on an lq file" 1 "not an LQ file|reads a checkpoint" inspect --estimate "$d/x.lq"
fails "quant options need --estimate" 2 "go with --estimate" inspect -t nf4 "$d/x.lq"
finish
