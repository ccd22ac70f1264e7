/* test_safetensors.c - the safetensors reader on good and hostile images. */
#include "libquant.h"
#include "test.h"

#include <stdint.h>

/* Build an image: 8-byte length, header, data. Caller frees. */
static unsigned char *image(const char *hdr, size_t datalen, size_t *size)
{
	size_t h = strlen(hdr);
	*size = 8 + h + datalen;
	unsigned char *b = calloc(1, *size);
	for (int i = 0; i < 8; i++)
		b[i] = (unsigned char)((uint64_t)h >> (8 * i));
	memcpy(b + 8, hdr, h);
	for (size_t i = 0; i < datalen; i++)
		b[8 + h + i] = (unsigned char)i;
	return b;
}

static int parse(const char *hdr, size_t datalen, struct lq_error *e)
{
	size_t n;
	unsigned char *b = image(hdr, datalen, &n);
	struct lq_st *st = NULL;
	int rc = lq_st_parse(&st, b, n, "x.safetensors", e);
	lq_st_close(st);
	free(b);
	return rc;
}

int main(void)
{
	struct lq_error e = {0};
	size_t n;
	unsigned char *b = image("{\"__metadata__\":{\"format\":\"pt\"},"
				 "\"b\":{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[16,28]},"
				 "\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
				 "\"s\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[28,36]}}", 36, &n);
	struct lq_st *st = NULL;
	CHECK_OK(lq_st_parse(&st, b, n, "good", &e), &e);
	if (st) {
		CHECK(lq_st_count(st) == 3);
		const struct lq_st_tensor *t = lq_st_get(st, 0);
		CHECK(strcmp(t->name, "a") == 0 && t->dtype == LQ_DTYPE_F32 && t->nelem == 4, "order by offset");
		t = lq_st_find(st, "b");
		CHECK(t && t->ndim == 2 && t->shape[0] == 2 && t->shape[1] == 3 && t->nbytes == 12);
		CHECK(t && ((const unsigned char *)t->data)[0] == 16, "data pointer");
		t = lq_st_find(st, "s");
		CHECK(t && t->dtype == -1 && strcmp(t->dtype_name, "I64") == 0 && t->ndim == 0 && t->nelem == 1);
		CHECK(lq_st_find(st, "zz") == NULL);
		CHECK(lq_st_total_bytes(st) == 36);
	}
	lq_st_close(st);
	free(b);

	/* hostile inputs: each must fail with LQ_ERR_FORMAT and a message */
	static const struct { const char *hdr; size_t data; const char *why; } bad[] = {
		{"[1,2]", 0, "not an object"},
		{"{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}", 16, "invalid JSON"},
		{"{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8, "past end"},
		{"{\"a\":{\"dtype\":\"F32\",\"shape\":[5],\"data_offsets\":[0,16]}}", 16, "size mismatch"},
		{"{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[16,0]}}", 16, "end < begin"},
		{"{\"a\":{\"dtype\":\"F32\",\"shape\":[-4],\"data_offsets\":[0,16]}}", 16, "negative dim"},
		{"{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,16]}}", 16, "overflow"},
		{"{\"a\":{\"dtype\":\"Q7\",\"shape\":[4],\"data_offsets\":[0,16]}}", 16, "unknown dtype"},
		{"{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
		 "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}", 24, "overlap"},
		{"{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
		 "\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 16, "duplicate key"},
		{"{\"a\":{\"dtype\":\"F32\",\"shape\":[4]}}", 16, "no offsets"},
		{"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4, "too many dims"},
		{"{\"a\":7}", 0, "entry not object"},
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		memset(&e, 0, sizeof e);
		int rc = parse(bad[i].hdr, bad[i].data, &e);
		CHECK(rc != 0 && e.msg[0] && strstr(e.msg, "x.safetensors"), "%s: rc=%d msg=%s", bad[i].why, rc, e.msg);
	}
	/* truncated length prefix and absurd header length */
	unsigned char small[4] = {1, 2, 3, 4};
	CHECK(lq_st_parse(&st, small, 4, "x", &e) == LQ_ERR_FORMAT);
	unsigned char huge[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, '{', '}'};
	CHECK(lq_st_parse(&st, huge, 16, "x", &e) == LQ_ERR_FORMAT && strstr(e.msg, "header length"));
	CHECK(lq_st_open(&st, "/nonexistent/model.safetensors", &e) == LQ_ERR_IO && strstr(e.msg, "/nonexistent"));
	return test_summary();
}
