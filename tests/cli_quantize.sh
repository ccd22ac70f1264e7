#!/bin/sh
# cli_quantize.sh - quantize and inspect as a user runs them: outputs,
# determinism, atomic output, bad input, checksum verification.
. "${LQ_ROOT:-.}/tests/lib.sh"
GEN="$LQ_BUILD/tests/gen_checkpoint"
cd "$TMP" || exit 1
"$GEN" ck >/dev/null || { echo "gen_checkpoint failed"; exit 1; }
"$GEN" --shards 3 --dtype f32 --seed 7 ck32 >/dev/null
"$GEN" --preset small --shards 2 big >/dev/null

flip() { # flip bit 0 of the byte at offset $2 of file $1
	b=$(od -An -tu1 -j "$2" -N1 "$1" | tr -d ' ')
	printf "$(printf '\\%03o' $((b ^ 1)))" | dd of="$1" bs=1 seek="$2" conv=notrunc 2>/dev/null
}

# --- basic run, summary, listing, verify
check "quantize default" quantize -q -o ck.lq ck
check "inspect summary" inspect ck.lq
has "summary arch" "^architecture: +LlamaForCausalLM" out
has "summary quant" "^quantization: +nf4, block 64, double quant, compute bf16" out
has "summary count" "^tensors: +21 \(14 nf4, 7 unquantized\)" out
check "inspect --tensors" inspect --tensors ck.lq
[ "$(wc -l < out)" -eq 21 ] && ok || bad "--tensors line count"
has "lm_head kept bf16" "^lm_head.weight +512x256 +BF16 " out
has "q_proj nf4" "^model.layers.1.self_attn.q_proj.weight +256x256 +nf4-dq/64 +BF16 +33808 [0-9a-f]{16}$" out
check "inspect --verify" inspect --verify ck.lq
has "verify message" "21 tensors and 2 files checked, 0 failed" out
check "inspect --json" inspect --json --tensors ck.lq
if command -v jq >/dev/null; then
	[ "$(jq -r '.tensors | length' out)" = 21 ] && ok || bad "json tensor count"
	[ "$(jq -r '.quantization.type' out)" = nf4 ] && ok || bad "json quant type"
	[ "$(jq -r '.footprint.transformers' out)" -gt 0 ] && ok || bad "json footprint"
fi
check "inspect checkpoint dir" inspect ck
has "checkpoint summary" "quantization: +none \(source checkpoint\)" out
check "inspect sharded f32" inspect --tensors ck32
has "f32 listing" "^model.norm.weight +256 +F32 +F32 +1024 -$" out

# --- every type and option
for t in nf4 fp4 int8 none; do
	check "quantize -t $t" quantize -q -t $t -o ck-$t.lq ck32
	check "verify $t" inspect --verify ck-$t.lq
done
check "no double quant" quantize -q --no-double-quant -b 128 -o ck-nodq.lq ck32
check "inspect nodq" inspect --tensors ck-nodq.lq
has "nodq storage" "^model.layers.0.mlp.up_proj.weight +688x256 +nf4/128 +F32 " out
check "int8 stats" inspect --stats model.layers.0.mlp.down_proj.weight --source ck32 ck-int8.lq
rel=$(sed -n 's/^relative rmse: *//p' out)
awk "BEGIN{exit !($rel > 0 && $rel < 0.01)}" && ok || bad "int8 relative rmse $rel not in (0, 0.01)"
check "nf4 stats" inspect --stats model.layers.0.mlp.down_proj.weight --source ck32 ck-nf4.lq
rel=$(sed -n 's/^relative rmse: *//p' out)
awk "BEGIN{exit !($rel > 0.05 && $rel < 0.12)}" && ok || bad "nf4 relative rmse $rel not in (0.05, 0.12)"
check "none is exact" inspect --stats model.layers.0.mlp.down_proj.weight --source ck32 ck-none.lq
has "none exact" "^max abs error: +0$" out
check "keep/quantize globs" quantize -q --keep '*.q_proj.weight' --quantize-head -o ck-glob.lq ck
check "glob listing" inspect --tensors ck-glob.lq
has "kept q_proj" "^model.layers.0.self_attn.q_proj.weight +256x256 +BF16 " out
has "quantized head" "^lm_head.weight +512x256 +nf4-dq/64 " out
check "bare safetensors + --quantize" quantize -q --quantize '*.up_proj.weight' -o bare.lq ck32/model-00001-of-00003.safetensors
check "bare listing" inspect --tensors bare.lq
has "bare up_proj" "up_proj.weight +688x256 +nf4-dq/64 " out

# --- a Hugging Face cache snapshot: repo, revision and SHA-256s are recorded
c=hub/models--acme--tiny-llama
mkdir -p $c/blobs $c/snapshots/0123abcd $c/refs
for f in config.json generation_config.json model.safetensors; do
	sha=$(sha256sum ck/$f | cut -d' ' -f1)
	cp ck/$f $c/blobs/$sha && ln -s ../../blobs/$sha $c/snapshots/0123abcd/$f
done
check "quantize a cache snapshot" quantize -q -o cache.lq $c/snapshots/0123abcd
check "inspect cache.lq" inspect cache.lq
has "source line" "^source: +acme/tiny-llama @ 0123abcd$" out
if command -v jq >/dev/null; then
	inspect --json cache.lq > j.json
	[ "$(jq -r '.source.files[0].sha256' j.json)" = "$(sha256sum ck/model.safetensors | cut -d' ' -f1)" ] && ok || bad "sha256 recorded"
	[ "$(jq -r '.source.files[0].name' j.json)" = model.safetensors ] && ok || bad "file name recorded"
fi

# --- the tokenizer is stored precompiled; run gets the same ids from it as from the JSON
for tk in llama3_1 qwen3; do
	mkdir -p tok-$tk && cp ck/config.json ck/model.safetensors tok-$tk/
	for f in tokenizer.json tokenizer_config.json; do
		gzip -dc "$LQ_ROOT/tests/fixtures/tokenizers/$tk/$f.gz" > tok-$tk/$f
	done
	check "quantize with $tk tokenizer" quantize -q -o tok-$tk.lq tok-$tk
	check "inspect $tk" inspect tok-$tk.lq
	has "$tk blob stored" "stored files: .*tokenizer.lqtok" out
	if command -v jq >/dev/null; then # the estimate counts the stored files and metadata exactly
		[ "$(inspect --estimate --json tok-$tk | jq .lq_size)" = "$(wc -c < tok-$tk.lq)" ] && ok || bad "$tk: --estimate size"
	fi
	if command -v run >/dev/null; then
		grep '^{"text":' "$LQ_ROOT/tests/fixtures/tok_input.jsonl" | sed 's/^{"text":\(.*\)}$/\1/' > texts.jsonl
		run --tokenize --jsonl tok-$tk.lq < texts.jsonl > ids-lq.txt 2>err && ok || bad "$tk: run --tokenize from the .lq"
		run --tokenize --jsonl tok-$tk < texts.jsonl > ids-dir.txt 2>err && ok || bad "$tk: run --tokenize from the directory"
		[ "$(wc -l < ids-lq.txt)" -eq "$(wc -l < texts.jsonl)" ] && ok || bad "$tk: one line of ids per text"
		[ -s ids-lq.txt ] && same "$tk: blob and JSON tokenize alike" ids-lq.txt ids-dir.txt
	fi
done

# --- determinism and streaming
check "again" quantize -q -j 1 -o ck-again.lq ck
same "deterministic across runs and thread counts" ck.lq ck-again.lq
quantize -q -o - ck > ck-stdout.lq 2>err && ok || bad "-o - failed"
same "stdout stream equals file" ck.lq ck-stdout.lq
cat ck-stdout.lq | inspect --verify /dev/stdin >/dev/null 2>&1 && bad "pipe is not a file" || ok

# --- output safety
cp ck.lq keep.lq
fails "refuses to overwrite" 1 "already exists; use -f" quantize -q -o keep.lq ck32
same "existing output untouched" ck.lq keep.lq
check "overwrite with -f" quantize -q -f -o keep.lq ck32
mkdir ro && chmod 555 ro
if [ "$(id -u)" -ne 0 ]; then
	fails "unwritable dir" 1 "ro/x.lq.*Permission denied" quantize -q -o ro/x.lq ck
fi
fails "missing dir" 1 "nodir/x.lq.*No such file" quantize -q -o nodir/x.lq ck
fails "full disk" 1 "No space left on device" sh -c 'quantize -q -o - ck > /dev/full'
# SIGTERM mid-run leaves neither OUT nor its temp file
quantize -q -j 1 --no-sync -o killed.lq big & pid=$!
sleep 0.2; kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null
absent "killed run leaves nothing" killed.lq killed.lq.tmp.*
# SIGKILL: OUT never appears (a temp may remain, as with any tool)
quantize -q -j 1 --no-sync -o killed9.lq big & pid=$!
sleep 0.2; kill -KILL $pid 2>/dev/null; wait $pid 2>/dev/null
absent "SIGKILL leaves no OUT" killed9.lq
rm -f killed9.lq.tmp.*

# --- bad input: one clear line, exit 1, no output
mkdir noconf && cp ck/model.safetensors noconf/
fails "missing config.json" 1 "noconf: missing config.json" quantize -q -o x.lq noconf
absent "no output after error" x.lq x.lq.tmp.*
mkdir arch && cp ck/model.safetensors arch/ && sed 's/LlamaForCausalLM/FooForCausalLM/' ck/config.json > arch/config.json
fails "unknown architecture" 1 "unknown architecture 'FooForCausalLM'" quantize -q -o x.lq arch
mkdir badjson && cp ck/model.safetensors badjson/ && echo '{"architectures": [' > badjson/config.json
fails "invalid config.json" 1 "badjson/config.json: invalid JSON" quantize -q -o x.lq badjson
"$GEN" --poison model.layers.1.mlp.up_proj.weight nan1 >/dev/null
fails "NaN refused" 1 "tensor 'model.layers.1.mlp.up_proj.weight': NaN at element 5 \(row 0, column 5\)" quantize -q -o x.lq nan1
absent "no output after NaN" x.lq x.lq.tmp.*
check "--allow-nonfinite" quantize -q --allow-nonfinite -o nan.lq nan1
"$GEN" --poison model.norm.weight:-inf nan2 >/dev/null
fails "Inf in a kept tensor" 1 "model.norm.weight': -Inf at element 5" quantize -q -o x.lq nan2
head -c 1000 ck/model.safetensors > trunc.safetensors
fails "truncated safetensors" 1 "trunc.safetensors: header length .* runs past the end" quantize -q --quantize '*' -o x.lq trunc.safetensors
# a tensor of an unsupported dtype (I64)
hdr='{"a":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}}'
{ printf "\\$(printf '%03o' ${#hdr})\\000\\000\\000\\000\\000\\000\\000"; printf '%s' "$hdr"; head -c 16 /dev/zero; } > i64.safetensors
fails "unsupported dtype" 1 "tensor 'a' has dtype I64" quantize -q -o x.lq i64.safetensors
fails "not a checkpoint" 1 "nothing: No such file" quantize -q -o x.lq nothing
fails "usage: no args" 2 "no checkpoint given" quantize
fails "usage: bad type" 2 "unknown type 'nf5'" quantize -t nf5 -o x.lq ck
fails "usage: bad block" 2 "block size must be a power of two" quantize -b 48 -o x.lq ck
fails "usage: no output" 2 "no output file given" quantize ck
check "--help" quantize --help
has "help text" "^usage: quantize" out

# --- corrupt LQ files
head -c 5000 ck.lq > trunc.lq
fails "truncated lq" 1 "trunc.lq: footer missing" inspect trunc.lq
cp ck.lq magic.lq && printf 'X' | dd of=magic.lq bs=1 seek=1 conv=notrunc 2>/dev/null
fails "bad magic" 1 "magic.lq: not an LQ file" inspect magic.lq
size=$(wc -c < ck.lq)
cp ck.lq idx.lq && flip idx.lq $((size - 100))
fails "corrupt index" 1 "idx.lq: .*checksum mismatch" inspect idx.lq
# a single flipped bit anywhere in any tensor's data is caught by --verify
inspect --json --tensors ck.lq > j.json
if command -v jq >/dev/null; then
	n=0 caught=0
	for spec in $(jq -r '.tensors[] | .parts | to_entries[] | "\(.value[0]):\(.value[1])"' j.json); do
		off=${spec%%:*} len=${spec##*:}
		for pos in 0 $((len / 2)) $((len - 1)); do
			cp ck.lq flip.lq && flip flip.lq $((off + pos))
			n=$((n + 1))
			inspect --verify flip.lq > v.out 2>&1 || { grep -q "FAILED" v.out && caught=$((caught + 1)); }
		done
	done
	[ "$n" -gt 100 ] && [ "$caught" -eq "$n" ] && ok || bad "bit flips caught: $caught of $n"
	inspect --verify flip.lq >/dev/null 2>&1; [ $? -eq 1 ] && ok || bad "verify exit status"
fi

# --- dequant to .npy
check "dequant npy" inspect --dequant model.layers.0.mlp.down_proj.weight -o down.npy ck-int8.lq
if have_py numpy; then
	check "numpy reads it" python3 -c "
import numpy as np, sys
a = np.load('down.npy'); assert a.shape == (256, 688) and a.dtype == np.float32, (a.shape, a.dtype)
assert abs(float(a.std()) - 0.02) < 0.002, a.std()"
	inspect --dequant model.norm.weight -o - ck.lq > norm.npy 2>/dev/null && ok || bad "dequant to stdout"
	check "stdout npy" python3 -c "
import numpy as np; a = np.load('norm.npy'); assert a.shape == (256,) and (a == 1).all()"
else
	echo "skipping numpy checks: python package numpy missing"
fi
fails "dequant unknown tensor" 1 "no tensor 'nope'" inspect --dequant nope -o n.npy ck.lq

# --- NF4 on sizes the block does not divide, against bitsandbytes (a peer, when installed)
peer_check "bitsandbytes comparison" bnb_reference.py bnb bitsandbytes transformers safetensors
finish
