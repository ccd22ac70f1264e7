#!/bin/sh
# cli_run.sh - the run tool: usage errors, tokenize/detokenize/template,
# --ids/--logits, greedy and seeded generation, --stop, stdin prompts,
# --jsonl, --ppl, context limits, the EXAMPLES of man/run.1, and (when
# torch and transformers are installed) the exactness comparison of all
# five architectures against transformers (tests/run_reference.py check).
. "${LQ_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}/tests/lib.sh"

GEN="$LQ_BUILD/tests/gen_checkpoint"
FIX="$LQ_ROOT/tests/fixtures"
if [ ! -x "$GEN" ] || [ ! -x "$LQ_BIN/run" ]; then
	bad "missing $GEN or $LQ_BIN/run (make tests)"
	finish
	exit 1
fi

# a small Llama with the synthetic tokenizer and a chat template
M="$TMP/model"
"$GEN" --layers 2 --hidden 64 --intermediate 128 --heads 4 --kv-heads 2 --vocab 448 "$M" >/dev/null
cp "$FIX/tok_synth_a.json" "$M/tokenizer.json"
cat > "$M/tokenizer_config.json" <<'JSON'
{"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
 "chat_template": "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"}
JSON
check "quantize the test model" quantize -q -o "$TMP/m.lq" "$M"
L="$TMP/m.lq"

# usage
check "--help" run --help
has "--help lists --ppl" "--ppl" "$TMP/out"
fails "no model" 2 "missing MODEL" run
fails "bad -n" 2 "bad number" run -n x "$L"
fails "--logits without --ids" 2 "needs --ids" run --logits x.npy "$L"
fails "two modes" 2 "exclude" run --tokenize --template "$L"
fails "bad ids" 2 "not a list of token ids" run --ids 1,x,3 --logits "$TMP/x.npy" "$L"
fails "missing file" 1 "cannot open" run -p hi "$TMP/nope.lq"
head -c 3000 "$L" >"$TMP/cut.lq"
fails "truncated file" 1 "cut.lq" run --ids 1,2 --logits "$TMP/c.npy" "$TMP/cut.lq"
# devices (make check hides GPUs: CUDA_VISIBLE_DEVICES is empty, see run-checks)
fails "--cpu with --device" 2 "exclude each other" run --cpu --device 0 -p hi "$L"
fails "bad --compute-dtype" 2 "not bf16, fp16 or fp32" run --compute-dtype fp8 -p hi "$L"
fails "bad --device" 2 "bad number" run --device x -p hi "$L"
fails "no such CUDA device" 1 "no CUDA device 99|built without CUDA" run --device 99 -n 1 -p hi "$L"
check "--cpu -v" run --cpu -v -n 2 --temp 0 -p hi "$L"
has "-v names the device" "on cpu, [0-9]+ threads?, ready in" "$TMP/err"
check "no GPU: the CPU is used" run -v -n 2 --temp 0 -p hi "$L"
has "no GPU: -v says cpu" "on cpu" "$TMP/err"

# tokenizer and template (LQ file and checkpoint directory)
echo "hello brown fox" | run --tokenize "$L" >"$TMP/ids" 2>"$TMP/err" && ok || bad "--tokenize"
echo "hello brown fox" | run --tokenize "$M" >"$TMP/ids2" 2>"$TMP/err" && ok || bad "--tokenize on a directory"
same "--tokenize .lq = directory" "$TMP/ids" "$TMP/ids2"
run --detokenize --skip-special "$L" <"$TMP/ids" >"$TMP/text" 2>"$TMP/err" && ok || bad "--detokenize"
printf 'hello brown fox\n\n' >"$TMP/want"
same "tokenize/detokenize round trip (stdin taken exactly)" "$TMP/text" "$TMP/want"
printf '"hello brown fox"\n"the quick"\n' | run --tokenize --jsonl "$L" >"$TMP/out" 2>"$TMP/err"
[ "$(wc -l <"$TMP/out")" = 2 ] && grep -q '^\[1, ' "$TMP/out" && ok || bad "--tokenize --jsonl"
run --tokenize --jsonl "$L" <"$TMP/out" >/dev/null 2>&1 && bad "--tokenize --jsonl takes strings only" || ok
run --detokenize --jsonl "$L" <"$TMP/out" >"$TMP/dec" 2>"$TMP/err"
has "--detokenize --jsonl gives JSON strings" '^"<s>' "$TMP/dec"
run --template -s "Be brief" -p "Tell a joke" "$L" >"$TMP/out" 2>"$TMP/err"
printf '<s>system: Be brief\nuser: Tell a joke\nassistant:' >"$TMP/want"
same "--template" "$TMP/out" "$TMP/want"
printf '[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]' >"$TMP/msgs.json"
run --template --messages "$TMP/msgs.json" --no-generation-prompt "$M" >"$TMP/out" 2>"$TMP/err"
printf '<s>user: a\nassistant: b\n' >"$TMP/want"
same "--template --messages --no-generation-prompt" "$TMP/out" "$TMP/want"

# real tokenizers (shared fixtures): the prompt ids of generation, as
# apply_chat_template(..., add_generation_prompt=True, tokenize=True) gives them
SH="$LQ_ROOT/../shared/fixtures/tokenizers"
[ -n "$LQ_SHARED" ] && SH="$LQ_SHARED/fixtures/tokenizers"
if [ -d "$SH" ] && have_py transformers; then
	for fam in llama3_1 qwen3 gemma3 llama2; do
		[ -f "$SH/$fam/tokenizer.json.gz" ] || continue
		d="$TMP/tok-$fam"
		mkdir -p "$d"
		for f in "$SH/$fam"/*.gz; do gunzip -c "$f" >"$d/$(basename "$f" .gz)"; done
		python3 -c "
import sys
from transformers import AutoTokenizer
t = AutoTokenizer.from_pretrained(sys.argv[1])
if not t.chat_template: sys.exit(3)
r = t.apply_chat_template([{'role': 'user', 'content': 'Tell a light-hearted joke, caf\u00e9 \u4f60\u597d'}],
                          add_generation_prompt=True, tokenize=True)
r = r['input_ids'] if hasattr(r, 'keys') else r
print(' '.join(map(str, r)))" "$d" >"$TMP/ref.ids" 2>/dev/null
		rc=$?
		[ $rc = 3 ] && continue
		[ $rc = 0 ] || { bad "$fam: transformers reference failed"; continue; }
		run --template -p "Tell a light-hearted joke, café 你好" "$d" 2>"$TMP/err" |
			run --tokenize --no-special "$d" >"$TMP/our.ids" 2>>"$TMP/err"
		same "$fam: template + tokenize = apply_chat_template(tokenize=True)" "$TMP/our.ids" "$TMP/ref.ids"
	done
else
	echo "skipping the real-tokenizer prompt check: shared fixtures or python package transformers missing"
fi

# raw forward pass
IDS=1,5,17,33,40,2,9,60
check "--ids --logits" run --ids $IDS --logits "$TMP/l.npy" "$L"
[ "$(head -c 6 "$TMP/l.npy" | tail -c 5)" = "NUMPY" ] && ok || bad "--logits writes .npy"
fails "--logits refuses to overwrite" 1 "already exists" run --ids $IDS --logits "$TMP/l.npy" "$L"
check "--logits -f" run -f -j 1 --ids $IDS --logits "$TMP/l1.npy" "$L"
same "same logits with 1 and all threads" "$TMP/l.npy" "$TMP/l1.npy"
fails "id outside the vocabulary" 1 "outside the vocabulary" run --ids 1,448 --logits "$TMP/v.npy" "$L"
if have_py numpy; then
	first=$(run --ids $IDS --output-ids --temp 0 -n 1 "$L" 2>/dev/null)
	am=$(python3 -c "import numpy as np; print(int(np.load('$TMP/l.npy')[-1].argmax()))")
	[ "$first" = "$am" ] && ok || bad "greedy first id $first != argmax of the logits $am"
else
	echo "skipping the argmax check: python package numpy missing"
fi

# generation
run --ids $IDS --output-ids --temp 0 -n 12 "$L" >"$TMP/g1" 2>"$TMP/err" && ok || bad "greedy --ids"
run --ids $IDS --output-ids --temp 0 -n 12 -j 1 "$L" >"$TMP/g2" 2>"$TMP/err"
same "greedy is deterministic (threads)" "$TMP/g1" "$TMP/g2"
n=$(wc -w <"$TMP/g1")
[ "$n" -ge 1 ] && [ "$n" -le 12 ] && ok || bad "-n 12 gave $n ids"
run -p "hello" --temp 0.8 --top-k 20 --top-p 0.9 --seed 5 -n 10 "$L" >"$TMP/s1" 2>"$TMP/err" && ok || bad "sampling"
run -p "hello" --temp 0.8 --top-k 20 --top-p 0.9 --seed 5 -n 10 "$L" >"$TMP/s2" 2>"$TMP/err"
same "same seed, same text" "$TMP/s1" "$TMP/s2"
echo "hello" | run -n 6 --temp 0 "$L" >"$TMP/a" 2>"$TMP/err" && ok || bad "stdin as the user message"
run -p "hello" -n 6 --temp 0 "$L" >"$TMP/b" 2>"$TMP/err"
same "stdin = -p" "$TMP/a" "$TMP/b"
run -p "hello" -n 6 --temp 0 -v "$L" >/dev/null 2>"$TMP/err"
has "-v prints tok/s" "tok/s" "$TMP/err"
run -p "hello" -n 30 --temp 0 "$L" >"$TMP/full" 2>"$TMP/err"
stop=$(head -n 1 "$TMP/full" | cut -c 4-6)
if [ -n "$stop" ]; then
	run -p "hello" -n 30 --temp 0 --stop "$stop" "$L" >"$TMP/cut" 2>"$TMP/err"
	c=$(cat "$TMP/cut")
	case "$(cat "$TMP/full")" in "$c$stop"*) ok ;; *) bad "--stop '$stop': '$c' is not the text before it" ;; esac
	case "$c" in *"$stop"*) bad "--stop string printed" ;; *) ok ;; esac
fi
run -p "hello" -n 4 --repetition-penalty 1.3 --temp 0 "$L" >/dev/null 2>"$TMP/err" && ok || bad "--repetition-penalty"

# context limits
fails "prompt longer than --ctx" 1 "context length" run --ctx 4 --ids $IDS --output-ids "$L"
long=$(awk 'BEGIN{for(i=0;i<3000;i++) printf "brown "}')
fails "prompt longer than the model context" 1 "context length" run -p "$long" -n 1 "$L"

# --jsonl
printf '%s\n' '{"prompt": "hello", "max_new_tokens": 3, "temperature": 0}' \
	'{"messages": [{"role": "user", "content": "hi"}], "max_new_tokens": 2}' |
	run --jsonl "$L" >"$TMP/out" 2>"$TMP/err" && ok || bad "--jsonl"
[ "$(wc -l <"$TMP/out")" = 2 ] && ok || bad "--jsonl: two results expected"
has "--jsonl result fields" '"text".*"prompt_tokens".*"completion_tokens"' "$TMP/out"
echo '{"nothing": 1}' | run --jsonl "$L" >/dev/null 2>"$TMP/err" && bad "--jsonl without prompt" || ok
if [ -n "$stop" ]; then
	jstop=$(printf '%s' "$stop" | sed 's/[\\"]/\\&/g')
	printf '{"prompt": "hello", "max_new_tokens": 30, "temperature": 0, "stop": ["%s"]}\n' "$jstop" |
		run --jsonl "$L" >"$TMP/out" 2>"$TMP/err"
	has "--jsonl stop" '"finish_reason": ?"stop"' "$TMP/out"
fi

# --chat: the second turn (KV cache reused) equals a fresh run of the conversation
printf 'hello\nbrown fox\n' | run --chat -n 8 --temp 0 "$L" >"$TMP/chat" 2>"$TMP/err" && ok || bad "--chat"
[ "$(wc -l <"$TMP/chat")" = 2 ] && ok || bad "--chat: two answers expected"
echo '{"messages": [{"role": "user", "content": "hello"}], "max_new_tokens": 8, "temperature": 0}' |
	run --jsonl "$L" 2>/dev/null | python3 -c "
import json, sys
a = json.loads(sys.stdin.read())['text']
print(json.dumps([{'role': 'user', 'content': 'hello'}, {'role': 'assistant', 'content': a},
                  {'role': 'user', 'content': 'brown fox'}]))" >"$TMP/conv.json"
run --messages "$TMP/conv.json" -n 8 --temp 0 "$L" >"$TMP/two" 2>"$TMP/err"
sed -n 2p "$TMP/chat" >"$TMP/chat2"
same "--chat second turn = --messages of the conversation" "$TMP/chat2" "$TMP/two"
fails "--chat with -p" 2 "--chat takes only" run --chat -p x "$L"

# perplexity
awk 'BEGIN{for(i=0;i<40;i++) print "the quick brown fox jumps over the lazy dog"}' >"$TMP/text.txt"
run --ppl "$TMP/text.txt" --ctx 64 "$L" >"$TMP/out" 2>"$TMP/err" && ok || bad "--ppl"
awk '{exit !($1 > 1 && $1 < 1e6)}' "$TMP/out" && ok || bad "--ppl value: $(cat "$TMP/out")"
if have_py numpy; then
	# the same value from --logits of each window, windows as transformers' docs stride them
	head -c 300 "$TMP/text.txt" >"$TMP/short.txt"
	run --tokenize "$L" <"$TMP/short.txt" >"$TMP/ppl.ids" 2>/dev/null
	for ctx in 1000 24; do
		run --ppl "$TMP/short.txt" --ctx $ctx --stride 10 "$L" >"$TMP/ppl.ours" 2>/dev/null
		python3 - "$LQ_BIN/run" "$L" "$TMP/ppl.ids" $ctx 10 "$TMP" >"$TMP/ppl.ref" <<'PY' || bad "ppl reference script"
import subprocess, sys, numpy as np
run, model, idsf, ctx, stride, tmp = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
ids = [int(x) for x in open(idsf).read().split()]
ctx = min(ctx, 1 << 30)
stride = min(stride, ctx) if ctx < len(ids) else stride
nll, cnt, prev = 0.0, 0, 0
for begin in range(0, len(ids), stride):
    end = min(begin + ctx, len(ids)); trg = end - prev
    w = ids[begin:end]
    subprocess.run([run, "-f", "--ids", ",".join(map(str, w)), "--logits", tmp + "/w.npy", model], check=True)
    lg = np.load(tmp + "/w.npy").astype(np.float64)
    for t in range(max(len(w) - trg, 1), len(w)):
        row = lg[t - 1]; m = row.max()
        nll += np.log(np.exp(row - m).sum()) + m - row[w[t]]; cnt += 1
    prev = end
    if end == len(ids): break
print("%.6f" % np.exp(nll / cnt))
PY
		awk -v a="$(cat "$TMP/ppl.ours")" -v b="$(cat "$TMP/ppl.ref")" 'BEGIN{d=a-b; if (d<0) d=-d; exit !(b > 0 && d / b < 1e-4)}' &&
			ok || bad "--ppl --ctx $ctx: $(cat "$TMP/ppl.ours") != reference $(cat "$TMP/ppl.ref")"
	done
fi

# man page EXAMPLES ("$ " lines) against a model named "model" (with tokenizer)
page="$LQ_ROOT/man/run.1"
if [ -f "$page" ]; then
	for sec in NAME SYNOPSIS OPTIONS EXAMPLES "EXIT STATUS"; do
		grep -q "^\.SH $sec" "$page" && ok || bad "run.1: no $sec section"
	done
	if command -v groff >/dev/null; then
		w=$(groff -t -man -ww -z "$page" 2>&1)
		[ -z "$w" ] && ok || bad "run.1 renders with warnings: $w"
	fi
	mkdir -p "$TMP/man" && cp -r "$M" "$TMP/man/model"
	(cd "$TMP/man" && quantize -q -o model.lq model) || bad "man: quantize"
	awk '/^\.SH /{ex = ($2 == "EXAMPLES")} ex && /^\.EX/{inb=1; next} ex && /^\.EE/{inb=0; next} ex && inb' "$page" |
		sed -e 's/\\-/-/g' -e 's/\\e/\\/g' -e "s/\\\\(aq/'/g" | grep '^\$ ' | sed 's/^\$ //' >"$TMP/ex"
	[ -s "$TMP/ex" ] && ok || bad "run.1: no examples"
	while IFS= read -r cmd; do
		if (cd "$TMP/man" && sh -c "set -e; $cmd") >"$TMP/out" 2>"$TMP/err" </dev/null; then ok; else
			bad "run.1 example failed: $cmd"; sed 's/^/  | /' "$TMP/err" | head -5 >&2
		fi
	done <"$TMP/ex"
else
	bad "man/run.1 missing"
fi

# exactness against transformers
peer_check "transformers comparison" run_reference.py ref torch transformers safetensors
finish
