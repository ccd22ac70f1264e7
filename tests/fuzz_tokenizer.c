/*
 * fuzz_tokenizer.c - libFuzzer target for the tokenizer loaders (make fuzz;
 * built only by tests/run-fuzz with clang -fsanitize=fuzzer, never by make).
 *
 * The first input byte picks what the rest is:
 *   0  a blob, checksum fixed up first so the parser itself is exercised
 *   1  a blob as is
 *   2  tokenizer.json text
 *   3  a patch over a valid built-in blob: pairs (offset16 LE, byte) XORed in,
 *      checksum fixed up (deep coverage without a seed corpus)
 * Whatever loads is then used to encode and decode a short text.
 */
#include "libquant.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char seed_json[] =
	"{\"added_tokens\":["
	"{\"id\":0,\"content\":\"<unk>\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":true},"
	"{\"id\":1,\"content\":\"<s>\",\"single_word\":false,\"lstrip\":true,\"rstrip\":false,\"normalized\":false,\"special\":true},"
	"{\"id\":9,\"content\":\"[w]\",\"single_word\":true,\"lstrip\":false,\"rstrip\":true,\"normalized\":true,\"special\":false}],"
	"\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"NFKC\"},{\"type\":\"Prepend\",\"prepend\":\"_\"},"
	"{\"type\":\"Replace\",\"pattern\":{\"Regex\":\"[0-9]+\"},\"content\":\"#\"}]},"
	"\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":\"\\\\s+\"},"
	"\"behavior\":\"MergedWithNext\",\"invert\":false},{\"type\":\"Metaspace\",\"replacement\":\"_\",\"prepend_scheme\":\"first\","
	"\"split\":true},{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":true}]},"
	"\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<s>\",\"type_id\":0}},"
	"{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],\"special_tokens\":{\"<s>\":{\"id\":\"<s>\",\"ids\":[1]}}},"
	"\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":{\"String\":\"_\"},\"content\":\" \"},"
	"{\"type\":\"ByteFallback\"},{\"type\":\"Metaspace\",\"replacement\":\"_\",\"prepend_scheme\":\"always\"},"
	"{\"type\":\"ByteLevel\"},{\"type\":\"Fuse\"},{\"type\":\"Strip\",\"content\":\" \",\"start\":1,\"stop\":1}]},"
	"\"model\":{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"fuse_unk\":true,\"byte_fallback\":true,\"ignore_merges\":true,"
	"\"vocab\":{\"<unk>\":0,\"<s>\":1,\"_\":2,\"a\":3,\"b\":4,\"ab\":5,\"_ab\":6,\"<0x41>\":7,\"#\":8},"
	"\"merges\":[\"a b\",\"_ ab\"]}}";

static void use(struct lq_tokenizer *t)
{
	static const char txt[] = "ab <s> a [w] b\n\n 123 \xC3\xA9\xF0\x9F\xA4\x97 A\xFF";
	struct lq_error e;
	int32_t *ids;
	size_t n;
	for (int flags = 0; flags < 4; flags++) {
		if (lq_tokenizer_encode(t, txt, sizeof txt - 1, flags, &ids, &n, &e) == 0) {
			char *s;
			if (lq_tokenizer_decode(t, ids, n, flags & 3, &s, NULL, &e) == 0)
				free(s);
			free(ids);
		}
	}
	static const int32_t some[] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, -1, 100000};
	char *s, buf[64];
	size_t l;
	if (lq_tokenizer_decode(t, some, sizeof some / sizeof some[0], 0, &s, NULL, &e) == 0)
		free(s);
	for (int32_t id = 0; id < 12; id++) {
		(void)lq_tokenizer_token_bytes(t, id, id & 1, buf, sizeof buf, &l);
		(void)lq_tokenizer_id_to_token(t, id, &l);
	}
	(void)lq_tokenizer_token_to_id(t, "ab", 2);
}

static void fix_checksum(uint8_t *b, size_t n)
{
	if (n < 8)
		return;
	uint64_t h = lq_xxh3(b, n - 8);
	for (int k = 0; k < 8; k++)
		b[n - 8 + k] = (uint8_t)(h >> (8 * k));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static void *seed;
	static size_t seed_len;
	struct lq_error e;
	struct lq_tokenizer *t = NULL;
	if (!seed) {
		if (lq_tokenizer_load_json(&t, seed_json, sizeof seed_json - 1, NULL, 0, &e) ||
		    lq_tokenizer_serialize(t, &seed, &seed_len, &e)) {
			fprintf(stderr, "fuzz_tokenizer: seed: %s\n", e.msg);
			abort();
		}
		lq_tokenizer_free(t);
		t = NULL;
	}
	if (size < 1)
		return 0;
	int mode = data[0] & 3;
	data++;
	size--;
	uint8_t *b = NULL;
	if (mode == 0 || mode == 1) {
		b = malloc(size ? size : 1);
		if (!b)
			return 0;
		memcpy(b, data, size);
		if (mode == 0)
			fix_checksum(b, size);
		if (lq_tokenizer_load_blob(&t, b, size, &e) == 0)
			use(t);
	} else if (mode == 2) {
		if (lq_tokenizer_load_json(&t, (const char *)data, size, NULL, 0, &e) == 0)
			use(t);
	} else {
		b = malloc(seed_len);
		if (!b)
			return 0;
		memcpy(b, seed, seed_len);
		for (size_t i = 0; i + 3 <= size; i += 3) {
			size_t off = (size_t)(data[i] | data[i + 1] << 8) % seed_len;
			b[off] ^= data[i + 2];
		}
		fix_checksum(b, seed_len);
		if (lq_tokenizer_load_blob(&t, b, seed_len, &e) == 0)
			use(t);
	}
	lq_tokenizer_free(t);
	free(b);
	return 0;
}
