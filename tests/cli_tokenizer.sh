#!/bin/sh
# cli_tokenizer.sh - the tokenizer against Hugging Face `tokenizers` (and
# `transformers` 5, with LQ_TOKENIZER_TRANSFORMERS5) reference
# output for the four tokenizer families (Llama 3.1, Llama 2, Qwen3, Gemma 3)
# and two small synthetic tokenizers that use the remaining features:
# committed fixtures always, plus a fresh randomized comparison when the
# Python package `tokenizers` is installed.
. "${LQ_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}/tests/lib.sh"

GEN="$LQ_BUILD/tests/gen_tok"
FIX="$LQ_ROOT/tests/fixtures"
SPECIALS='<|eot_id|> <|begin_of_text|> <|im_start|> <|im_end|> <think> <start_of_turn> <end_of_turn> <s> </s> <bos> <unk> <eos> <pad> <mask> <tool> [word] hello_world 1234 `` [UNK] [CLS] ... 12,345'

tf5=0
if have_py transformers; then
	tfv=$(python3 -c 'import transformers; print(transformers.__version__.split(".")[0])' 2>/dev/null)
	[ "${tfv:-0}" -ge 5 ] 2>/dev/null && tf5=1
	[ "$tf5" = 1 ] || echo "skipping the live transformers comparison: needs transformers >= 5 (have ${tfv:-none})"
else
	echo "skipping the live transformers comparison: python package transformers missing"
fi

if [ ! -x "$GEN" ]; then
	bad "missing $GEN (make tests)"
	finish
	exit 1
fi

have_tok=0
if have_py tokenizers; then
	have_tok=1
	python3 "$LQ_ROOT/tests/tok_reference.py" random "$(date +%s)" 250 $SPECIALS >"$TMP/random.jsonl" || bad "random corpus"
else
	echo "skipping the randomized comparison: python package tokenizers missing"
fi

for t in llama3_1 llama2 qwen3 gemma3 synth_a synth_b synth_c; do
	td="$TMP/$t"
	mkdir -p "$td"
	case $t in
	synth_*)
		cp "$FIX/tok_$t.json" "$td/tokenizer.json"
		if [ -f "$FIX/tok_${t}_config.json" ]; then
			cp "$FIX/tok_${t}_config.json" "$td/tokenizer_config.json"
		else
			echo '{}' >"$td/tokenizer_config.json"
		fi ;;
	*)
		gzip -dc "$FIX/tokenizers/$t/tokenizer.json.gz" >"$td/tokenizer.json" || { bad "$t: gunzip"; continue; }
		gzip -dc "$FIX/tokenizers/$t/tokenizer_config.json.gz" >"$td/tokenizer_config.json" || { bad "$t: gunzip"; continue; } ;;
	esac
	# committed fixtures, from JSON and through the binary blob
	check "$t: encode/decode fixture (json)" "$GEN" "$td/tokenizer.json" "$td/tokenizer_config.json" \
		<"$FIX/tok_input.jsonl"
	same "$t: fixture output (json)" "$TMP/out" "$FIX/tok_expected_$t.jsonl"
	check "$t: encode/decode fixture (blob)" "$GEN" -b "$td/tokenizer.json" "$td/tokenizer_config.json" \
		<"$FIX/tok_input.jsonl"
	same "$t: fixture output (blob)" "$TMP/out" "$FIX/tok_expected_$t.jsonl"
	# transformers 5 (committed output where it differs from tokenizers, and live
	# when installed)
	if [ -f "$FIX/tok_expected_tf5_$t.jsonl" ]; then
		check "$t: fixture (transformers 5 mode)" "$GEN" -b -5 "$td/tokenizer.json" "$td/tokenizer_config.json" \
			<"$FIX/tok_input.jsonl"
		same "$t: fixture output (transformers 5 mode)" "$TMP/out" "$FIX/tok_expected_tf5_$t.jsonl"
	fi
	case $t in synth_*) ;; *)
		if [ "$tf5" = 1 ] && [ "$have_tok" = 1 ]; then
			python3 "$LQ_ROOT/tests/tok_reference.py" expected-transformers "$td" <"$TMP/random.jsonl" \
				>"$td/random_tf.jsonl" 2>/dev/null || bad "$t: transformers reference"
			check "$t: random corpus (transformers 5 mode)" "$GEN" -5 "$td/tokenizer.json" \
				"$td/tokenizer_config.json" <"$TMP/random.jsonl"
			if cmp -s "$TMP/out" "$td/random_tf.jsonl"; then
				ok
			else
				bad "$t: random corpus differs from transformers"
				diff "$TMP/out" "$td/random_tf.jsonl" | head -6 >&2
			fi
		fi ;;
	esac
	# fresh random comparison against the live Python library
	if [ "$have_tok" = 1 ]; then
		python3 "$LQ_ROOT/tests/tok_reference.py" expected "$td/tokenizer.json" "$td/tokenizer_config.json" \
			<"$TMP/random.jsonl" >"$td/random_expected.jsonl" || bad "$t: python reference"
		check "$t: random corpus" "$GEN" -b "$td/tokenizer.json" "$td/tokenizer_config.json" \
			<"$TMP/random.jsonl"
		if cmp -s "$TMP/out" "$td/random_expected.jsonl"; then
			ok
		else
			bad "$t: random corpus differs from tokenizers (seed in $TMP/random.jsonl)"
			diff "$TMP/out" "$td/random_expected.jsonl" | head -6 >&2
		fi
	fi
	rm -f "$td/tokenizer.json"
done

# errors are reported, not crashed on
printf '{"model":{"type":"Unigram","vocab":[]}}' >"$TMP/uni.json"
fails "unsupported model" 1 "Unigram.*not supported" "$GEN" "$TMP/uni.json" </dev/null
printf '{"model":' >"$TMP/trunc.json"
fails "truncated json" 1 "tokenizer.json" "$GEN" "$TMP/trunc.json" </dev/null
fails "usage" 2 "usage" "$GEN"

finish
