#!/bin/sh
# cli_tiny.sh - the embedded tiny model (examples/tiny/model, trained by
# examples/tiny/train.py): it quantizes to NF4 and INT8 and verifies, its
# module trees (checkpoint and .lq files) equal transformers' print(model)
# (tests/fixtures/tiny.*.txt from examples/tiny/tree_reference.py) and its
# footprints transformers' get_memory_footprint(); with python's
# transformers and torch installed, transformers loads it, its tokenizer and
# chat template work, it predicts the held-out text far better than chance,
# and run --ppl gives transformers' perplexity of it.
. "${LQ_ROOT:-.}/tests/lib.sh"
M="$LQ_ROOT/examples/tiny/model"
FX="$LQ_ROOT/tests/fixtures"
for f in config.json generation_config.json model.safetensors tokenizer.json tokenizer_config.json; do
	[ -f "$M/$f" ] && ok || bad "examples/tiny/model/$f missing"
done
[ "$(du -k "$M" | tail -1 | cut -f1)" -lt 40960 ] && ok || bad "examples/tiny/model is 40 MB or more"

check "tree of the checkpoint" inspect --tree "$M"
same "bf16 tree" "$TMP/out" "$FX/tiny.bf16.txt"
for t in nf4 int8; do
	check "quantize $t" quantize -q -t $t -o "$TMP/tiny.$t.lq" "$M"
	check "verify $t" inspect --verify "$TMP/tiny.$t.lq"
	check "$t tree" inspect --tree "$TMP/tiny.$t.lq"
	same "$t tree" "$TMP/out" "$FX/tiny.$t.txt"
done
if command -v jq >/dev/null; then
	ref() { jq -r ".$1" "$FX/tiny.reference.json"; }
	inspect --json "$M" > "$TMP/j" 2>/dev/null
	[ "$(jq .parameters "$TMP/j")" = "$(ref num_parameters)" ] && ok || bad "parameter count $(jq .parameters "$TMP/j")"
	[ "$(jq .footprint.transformers "$TMP/j")" = "$(ref bf16)" ] && ok || bad "bf16 footprint"
	for t in nf4 int8; do
		inspect --json "$TMP/tiny.$t.lq" > "$TMP/j" 2>/dev/null
		[ "$(jq .footprint.transformers "$TMP/j")" = "$(ref $t)" ] && ok || bad "$t footprint $(jq .footprint.transformers "$TMP/j") != $(ref $t)"
	done
else
	echo "skipping footprints: jq missing"
fi
# the quantization is deterministic
quantize -q -t nf4 -o "$TMP/again.lq" "$M" && same "nf4 twice" "$TMP/tiny.nf4.lq" "$TMP/again.lq"

if ! have_py torch; then
	echo "skipping transformers checks: python package torch missing"
elif ! have_py transformers; then
	echo "skipping transformers checks: python package transformers missing"
else
	# the tree fixtures are transformers' own (when the recorded version is installed)
	want=$(sed -n 's/.*"transformers": "\(.*\)".*/\1/p' "$FX/tiny.reference.json")
	have=$(python3 -c 'import transformers; print(transformers.__version__)' 2>/dev/null)
	if [ "$want" = "$have" ]; then
		mkdir -p "$TMP/fx"
		if python3 "$LQ_ROOT/examples/tiny/tree_reference.py" "$M" "$TMP/fx" 2>"$TMP/err"; then
			for t in bf16 nf4 int8; do same "transformers' $t tree" "$TMP/fx/tiny.$t.txt" "$FX/tiny.$t.txt"; done
			same "transformers' footprints" "$TMP/fx/tiny.reference.json" "$FX/tiny.reference.json"
		else
			bad "tree_reference.py"; head -5 "$TMP/err" >&2
		fi
	else
		echo "skipping the fixture regeneration: transformers $have, fixtures from $want"
	fi
	cat > "$TMP/load.py" <<'PY'
import math, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
d, held = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(d)
model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
assert type(model).__name__ == "LlamaForCausalLM", type(model).__name__
assert model.config.vocab_size == len(tok) == 8192
ids = tok("In the beginning God created").input_ids
assert ids[0] == tok.bos_token_id and tok.decode(ids[1:]) == "In the beginning God created", ids
p = tok.apply_chat_template([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
                            tokenize=False, add_generation_prompt=True)
assert p == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
             "<|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|>"
             "<|start_header_id|>assistant<|end_header_id|>\n\n"), repr(p)
with torch.no_grad():
    x = torch.tensor([tok(open(held).read()).input_ids[:512]])
    loss = model(input_ids=x, labels=x).loss.item()
    y = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=24)
text = tok.decode(y[0, len(ids):], skip_special_tokens=True)
print("heldout[:512] loss %.3f ppl %.1f; greedy: %r" % (loss, math.exp(loss), text))
assert math.exp(loss) < 200, "perplexity %.1f: not trained?" % math.exp(loss)
words = text.split()
assert len(words) >= 8 and sum(w.strip(",.;:").isalpha() for w in words) >= len(words) * 3 // 4, text
PY
	if python3 "$TMP/load.py" "$M" "$LQ_ROOT/examples/tiny/heldout.txt" >"$TMP/out" 2>"$TMP/err"; then
		ok; sed 's/^/  /' "$TMP/out"
	else
		bad "transformers loads and runs the tiny model"; grep -v -i warn "$TMP/err" | tail -5 >&2
	fi
	# run --ppl on the held-out text's first 512 tokens (one window) is
	# exp(transformers' loss) on them, the bf16 weights kept (-t none)
	cat >"$TMP/ppl.py" <<'PY'
import math, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
d, held, out = sys.argv[1], sys.argv[2], sys.argv[3]
tok = AutoTokenizer.from_pretrained(d)
ids = tok(open(held).read()).input_ids[:512]
text = tok.decode(ids[1:])
assert tok(text).input_ids == ids, "the text does not tokenize back to its ids"
open(out, "w").write(text)
model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
with torch.no_grad():
    x = torch.tensor([ids])
    print("%.6f" % math.exp(model(input_ids=x, labels=x).loss.item()))
PY
	if python3 "$TMP/ppl.py" "$M" "$LQ_ROOT/examples/tiny/heldout.txt" "$TMP/held512.txt" >"$TMP/ppl.ref" 2>"$TMP/err" &&
	   quantize -q -t none -o "$TMP/tiny.none.lq" "$M" &&
	   run --ppl "$TMP/held512.txt" --ctx 512 "$TMP/tiny.none.lq" >"$TMP/ppl.ours" 2>>"$TMP/err"; then
		if awk -v a="$(cat "$TMP/ppl.ours")" -v b="$(cat "$TMP/ppl.ref")" \
			'BEGIN { d = a - b; if (d < 0) d = -d; exit !(b > 1 && d <= 1e-4 * b) }'; then
			ok
		else
			bad "run --ppl $(cat "$TMP/ppl.ours"), transformers $(cat "$TMP/ppl.ref")"
		fi
	else
		bad "perplexity against transformers"; grep -v -i warn "$TMP/err" | tail -5 >&2
	fi
fi
finish
