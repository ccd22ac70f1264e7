#!/bin/sh
# cli_model.sh - the module tree and footprints of libquant's model
# descriptions against transformers' own output (fixtures written by
# tests/model_reference.py with transformers 5.x): print(model) byte for byte
# for bf16, NF4 (Linear4bit) and INT8 (Linear8bitLt), get_memory_footprint()
# and num_parameters(), for small configs of all five architectures and for
# the published configs (tests/fixtures/configs) of Llama-3.1-8B and 3.2-1B,
# Mistral-7B v0.1 and v0.3, Qwen2-7B and 0.5B, Phi-3-mini (4k, 128k) and
# Phi-3-medium, Gemma-2-2b, 9b and 27b.
#
# SPDX-License-Identifier: MIT
# Copyright (c) the libquant authors
ROOT=${LQ_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
BUILD=${LQ_BUILD:-$ROOT/build}
G=$BUILD/tests/gen_model_tree
FX=$ROOT/tests/fixtures
pass=0 fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*" >&2; }
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT INT TERM

if [ ! -x "$G" ]; then
	echo "cli_model.sh: $G not built" >&2
	echo "0 passed, 1 failed"
	exit 1
fi

config_of() { # name -> config path
	if [ -f "$FX/model/$1.config.json" ]; then echo "$FX/model/$1.config.json"
	else echo "$FX/configs/$1.json"; fi
}

# reference.json -> "name num_parameters bf16 nf4 int8" lines (no python needed)
refs=$(tr -d ' \n' < "$FX/model/reference.json" | sed 's/"models":{/\n/; s/},"torch"/\n/' | sed -n 2p |
	sed 's/},"/}\n"/g' | sed -n 's/^"\([^"]*\)":{.*"bf16":\([0-9]*\).*"int8":\([0-9]*\).*"nf4":\([0-9]*\).*"num_parameters":\([0-9]*\).*/\1 \5 \2 \4 \3/p')
[ -n "$refs" ] || bad "cannot read reference.json"

echo "$refs" > "$tmp/refs"
while read -r name nparams fbf16 fnf4 fint8; do
	cfg=$(config_of "$name")
	for q in bf16 nf4 int8; do
		t=$q; [ $q = bf16 ] && t=none
		want=$FX/model/$name.$q.txt
		if "$G" -l "$FX/model/$name.tensors.txt" -t $t "$cfg" > "$tmp/out" 2> "$tmp/err" &&
		   cmp -s "$tmp/out" "$want"; then
			ok
		else
			bad "$name $q: tree differs from $want"
			diff "$tmp/out" "$want" | head -n 10 >&2
			cat "$tmp/err" >&2
		fi
		case $q in bf16) f=$fbf16;; nf4) f=$fnf4;; int8) f=$fint8;; esac
		set -- $("$G" -f -l "$FX/model/$name.tensors.txt" -t $t "$cfg" 2>/dev/null)
		if [ "$1" = "$nparams" ] && [ "$2" = "$f" ]; then
			ok
		else
			bad "$name $q: footprint '$1 $2', transformers says '$nparams $f'"
		fi
	done
done < "$tmp/refs"

# Mixed storage breaks the run of identical layers as PyTorch does.
"$G" -l "$FX/model/llama-small.tensors.txt" -t nf4 -k 'model.layers.0.mlp.*' \
	"$FX/model/llama-small.config.json" > "$tmp/out" 2> "$tmp/err"
cmp -s "$tmp/out" "$FX/model/llama-small.nf4-keep.txt" && ok || bad "llama-small nf4 --keep tree"
want=$(sed -n 's/.*"nf4_keep_l0_mlp": *\([0-9]*\).*/\1/p' "$FX/model/reference.json")
set -- $("$G" -f -l "$FX/model/llama-small.tensors.txt" -t nf4 -k 'model.layers.0.mlp.*' \
	"$FX/model/llama-small.config.json")
[ -n "$want" ] && [ "$2" = "$want" ] && ok || bad "llama-small nf4 --keep footprint '$2' != '$want'"

# The figures of issue 4 / bnb-format.md 5.3 for Llama-3.1-8B (no tensor list:
# the storage plan comes from the config's dtype).
set -- $("$G" -f -t nf4 "$FX/configs/llama-3.1-8b.json")
[ "$2" = 5591540224 ] && ok || bad "llama-3.1-8b nf4 footprint $2 != 5591540224"
[ "$5" = 5702540672 ] && ok || bad "llama-3.1-8b nf4 bnb resident $5 != 5702540672"
set -- $("$G" -f "$FX/configs/llama-3.1-8b.json")
[ "$2" = 16060523008 ] && ok || bad "llama-3.1-8b bf16 footprint $2 != 16060523008"
set -- $("$G" -f -n -t nf4 "$FX/configs/llama-3.1-8b.json")
[ "$2" = 5591540224 ] && ok || bad "llama-3.1-8b nf4 (no DQ) footprint $2"
# resident without DQ: packed + fp32 absmax (436,207,616)
[ "$3" = $((5591540224 + 436207616)) ] && ok || bad "llama-3.1-8b nf4 (no DQ) resident $3"

# The same from a Llama-3.1-8B-shaped safetensors checkpoint: a real header,
# 16 GB of data as a hole (sparse file), read by the safetensors reader.
if "$G" -w "$tmp/llama8b.safetensors" "$FX/configs/llama-3.1-8b.json" 2> "$tmp/err"; then
	set -- $("$G" -f -t nf4 -s "$tmp/llama8b.safetensors" "$FX/configs/llama-3.1-8b.json" 2> "$tmp/err")
	[ "$2" = 5591540224 ] && ok || bad "sparse llama-3.1-8b nf4 footprint '$2' $(cat "$tmp/err")"
	set -- $("$G" -f -s "$tmp/llama8b.safetensors" "$FX/configs/llama-3.1-8b.json" 2> "$tmp/err")
	[ "$2" = 16060523008 ] && ok || bad "sparse llama-3.1-8b bf16 footprint '$2' $(cat "$tmp/err")"
	"$G" -t nf4 -s "$tmp/llama8b.safetensors" "$FX/configs/llama-3.1-8b.json" > "$tmp/out" 2> "$tmp/err"
	cmp -s "$tmp/out" "$FX/model/llama-3.1-8b.nf4.txt" && ok || bad "sparse llama-3.1-8b nf4 tree"
	rm -f "$tmp/llama8b.safetensors"
else
	bad "cannot write a sparse checkpoint: $(cat "$tmp/err")"
fi

# JSON tree parses and lists every module (when python3 is there)
if command -v python3 > /dev/null 2>&1; then
	"$G" -j -t nf4 "$FX/model/llama-small.config.json" > "$tmp/tree.json"
	if python3 - "$tmp/tree.json" <<'EOF'
import json, sys
t = json.load(open(sys.argv[1]))
assert t["class"] == "LlamaForCausalLM", t["class"]
n = 0
def walk(m):
    global n
    n += 1
    for c in m["children"]:
        walk(c)
walk(t)
q = t["children"][0]["children"][1]["children"][0]["children"][0]["children"][0]
assert q["class"] == "Linear4bit" and q["parameters"][0]["storage"] == "nf4", q
assert q["parameters"][0]["bytes"] == 64 * 64 // 2, q
assert t["children"][1]["class"] == "Linear"
assert n == 1 + 1 + 1 + 1 + 3 * 13 + 1 + 1 + 1, n
EOF
	then ok; else bad "JSON tree"; fi
else
	echo "skipping JSON check: python3 missing"
fi

# Regenerate the fixtures with transformers itself when torch and the
# transformers version they were made with are installed.
want_tf=$(sed -n 's/.*"transformers": *"\([^"]*\)".*/\1/p' "$FX/model/reference.json")
have_tf=$(python3 -c 'import torch, transformers; print(transformers.__version__)' 2>/dev/null)
if [ -z "$have_tf" ]; then
	echo "skipping regeneration: python package torch or transformers missing"
elif [ "$have_tf" != "$want_tf" ]; then
	echo "skipping regeneration: transformers $have_tf installed, fixtures are from $want_tf"
else
	mkdir "$tmp/regen"
	if python3 "$ROOT/tests/model_reference.py" "$tmp/regen" > /dev/null 2>&1; then
		for f in "$FX"/model/*.txt; do
			if cmp -s "$f" "$tmp/regen/$(basename "$f")"; then ok; else bad "regenerated $(basename "$f") differs"; fi
		done
	else
		bad "tests/model_reference.py failed"
	fi
fi

# errors: wrong shape, missing tensor, unknown architecture
sed 's/^model.layers.1.self_attn.k_proj.weight BF16 32 64$/model.layers.1.self_attn.k_proj.weight BF16 33 64/' \
	"$FX/model/llama-small.tensors.txt" > "$tmp/bad.txt"
if "$G" -l "$tmp/bad.txt" "$FX/model/llama-small.config.json" > /dev/null 2> "$tmp/err"; then
	bad "wrong shape accepted"
else
	grep -q "model.layers.1.self_attn.k_proj.weight': shape \[33, 64\] does not match the expected \[32, 64\]" "$tmp/err" &&
		ok || bad "shape message: $(cat "$tmp/err")"
fi
grep -v '^model.norm.weight ' "$FX/model/llama-small.tensors.txt" > "$tmp/bad.txt"
if "$G" -l "$tmp/bad.txt" "$FX/model/llama-small.config.json" > /dev/null 2> "$tmp/err"; then
	bad "missing tensor accepted"
else
	grep -q "tensor 'model.norm.weight' is missing (expected \[64\])" "$tmp/err" && ok ||
		bad "missing message: $(cat "$tmp/err")"
fi
printf '{"model_type": "gpt2"}' > "$tmp/gpt2.json"
if "$G" "$tmp/gpt2.json" > /dev/null 2> "$tmp/err"; then
	bad "gpt2 accepted"
else
	grep -q "architecture 'gpt2' is not supported" "$tmp/err" && ok || bad "arch message: $(cat "$tmp/err")"
fi

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
