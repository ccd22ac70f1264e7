#!/bin/sh
# cli_template.sh - chat templates rendered by libquant (tests/gen_template) must match,
# byte for byte, what transformers' apply_chat_template renders
# (tests/fixtures/template_expected_*.jsonl, made by tests/template_reference.py).
# When transformers and jinja2 are installed, the fixtures are also re-derived live.
ROOT=${LQ_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
BUILD=${LQ_BUILD:-$ROOT/build}
GEN=$BUILD/tests/gen_template
FIX=$ROOT/tests/fixtures
pass=0 fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*" >&2; }

[ -x "$GEN" ] || { echo "cli_template: $GEN not built" >&2; echo "0 passed, 1 failed"; exit 1; }

for exp in "$FIX"/template_expected_*.jsonl; do
	name=$(basename "$exp" .jsonl); name=${name#template_expected_}
	[ -f "$FIX/templates/$name.json" ] || continue # features: checked by test_template
	out=$("$GEN" --check "$FIX/templates/$name.json" "$exp" 2>&1)
	line=$(printf '%s\n' "$out" | tail -n 1)
	p=$(printf '%s' "$line" | cut -d' ' -f1); f=$(printf '%s' "$line" | cut -d' ' -f3)
	case "$p$f" in *[!0-9]*|'') bad "$name: $out"; continue;; esac
	pass=$((pass + p)); fail=$((fail + f))
	[ "$f" -eq 0 ] || printf '%s\n' "$out" | head -n 20 >&2
done

# one rendering through the CLI form, compared with a literal
tmp=${TMPDIR:-/tmp}/cli_template.$$
mkdir -p "$tmp" && trap 'rm -rf "$tmp"' EXIT
printf '[{"role":"system","content":"You are a helpful assistant"},{"role":"user","content":"Tell a joke"}]' > "$tmp/m.json"
printf '<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nTell a joke<|im_end|>\n<|im_start|>assistant\n' > "$tmp/want"
if "$GEN" "$FIX/templates/qwen3.json" "$tmp/m.json" > "$tmp/got" && cmp -s "$tmp/want" "$tmp/got"; then ok; else bad "qwen3 CLI rendering"; fi
# a model without a template fails clearly
if "$GEN" "$FIX/templates/llama2.json" "$tmp/m.json" > /dev/null 2> "$tmp/err"; then
	bad "llama2 (no template) should fail"
elif grep -q "no chat_template" "$tmp/err"; then ok; else bad "llama2 error message: $(cat "$tmp/err")"; fi
# raise_exception text reaches the user
printf '[{"role":"user","content":"a"},{"role":"user","content":"b"}]' > "$tmp/m2.json"
if "$GEN" "$FIX/templates/gemma3.json" "$tmp/m2.json" > /dev/null 2> "$tmp/err"; then
	bad "gemma3 should reject non-alternating roles"
elif grep -q "Conversation roles must alternate" "$tmp/err"; then ok; else bad "gemma3 error message: $(cat "$tmp/err")"; fi

# live comparison with transformers when it is installed
if python3 -c 'import transformers, jinja2' 2>/dev/null; then
	if python3 "$ROOT/tests/template_reference.py" --check > "$tmp/live" 2>&1; then ok
	else bad "fixtures differ from a live transformers rendering: $(grep -v PyTorch "$tmp/live" | head -n 5)"; fi
else
	echo "skipping live template comparison: python package transformers or jinja2 missing" >&2
fi
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
