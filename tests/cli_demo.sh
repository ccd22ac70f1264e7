#!/bin/sh
# cli_demo.sh - make demo's pipeline (examples/demo.sh) runs end to end on the
# embedded model, and run's logits on it match transformers' (when torch and
# transformers are installed).
. "${LQ_ROOT:-.}/tests/lib.sh"
M="$LQ_ROOT/examples/tiny/model"
B=${LQ_BUILD#$LQ_ROOT/}
check "demo.sh" sh "$LQ_ROOT/examples/demo.sh" "$B"
cp "$TMP/out" "$TMP/demo.out"
has "demo tree" "^ +\(lm_head\): Linear\(in_features=256, out_features=8192, bias=False\)" "$TMP/demo.out"
has "demo nf4 layers" "\(q_proj\): Linear4bit\(in_features=256, out_features=256, bias=False\)" "$TMP/demo.out"
has "demo footprint table" "^nf4 +[0-9]+ +[0-9]+ +[0-9]+$" "$TMP/demo.out"
for t in bf16 int8 nf4; do
	has "demo perplexity $t" "^$t +[0-9]+\.[0-9]+$" "$TMP/demo.out"
done
ans=$(sed -n '/^\$ run -n 80/{n;p;}' "$TMP/demo.out")
[ -n "$ans" ] && ok || bad "demo: no generated answer"
# perplexities: int8 within 1%, nf4 within 5% of bf16
b=$(awk '$1 == "bf16" && NF == 2 {print $2}' "$TMP/demo.out")
for t in int8:0.01 nf4:0.05; do
	v=$(awk -v t="${t%:*}" '$1 == t && NF == 2 {print $2}' "$TMP/demo.out")
	awk "BEGIN{exit !($v > 0 && ($v - $b) / $b < ${t#*:} && ($b - $v) / $b < ${t#*:})}" && ok || bad "demo: ${t%:*} perplexity $v vs bf16 $b"
done
rm -rf "$LQ_ROOT/examples/out/tiny-"*.lq "$LQ_ROOT/examples/out/heldout-part.txt"

# run --ids --logits on the unquantized model against transformers, fp32
if python3 -c "import torch, transformers" 2>/dev/null; then
	quantize -q -t none -o "$TMP/tiny.lq" "$M"
	ids=$(head -c 2000 "$LQ_ROOT/examples/tiny/heldout.txt" | run --tokenize "$TMP/tiny.lq" | tr ' ' '\n' | head -n 64 | paste -sd, -)
	check "run --logits" run --ids "$ids" --logits "$TMP/ours.npy" "$TMP/tiny.lq"
	check "logits match transformers" python3 - "$M" "$ids" "$TMP/ours.npy" <<'PY'
import sys, numpy as np, torch
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
ids = [int(x) for x in sys.argv[2].split(",")]
with torch.no_grad():
    ref = m(torch.tensor([ids])).logits[0].numpy()
ours = np.load(sys.argv[3])
assert ours.shape == ref.shape, (ours.shape, ref.shape)
rel = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
assert rel < 1e-4, rel
assert (ours.argmax(-1) == ref.argmax(-1)).all()
print("relative L2", rel)
PY
else
	echo "skipping the transformers logits check: python packages torch/transformers missing"
fi
finish
