/* test_lq.c - LQ writer/reader round trip, determinism, hostile images. */
#include "libquant.h"
#include "test.h"

#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

/* Write a small LQ image into a memfd and return its bytes (caller frees). */
static unsigned char *make_image(size_t *size, int qtype, int dq)
{
	struct lq_error e = {0};
	int fd = memfd_create("lq", 0);
	struct lq_writer *w = NULL;
	CHECK_OK(lq_writer_create(&w, fd, "mem.lq", &e), &e);
	const char cfg[] = "{\"architectures\": [\"LlamaForCausalLM\"]}";
	CHECK_OK(lq_writer_add_blob(w, "config.json", cfg, sizeof cfg - 1, &e), &e);
	CHECK_OK(lq_writer_add_blob(w, "empty.json", "", 0, &e), &e);
	enum { R = 33, C = 64 };
	float x[R * C];
	for (int i = 0; i < R * C; i++)
		x[i] = (float)((i * 7919) % 1000 - 500) / 250.0f;
	struct lq_qparams p = {qtype, 64, dq};
	uint64_t n = R * C, nb = lq_qnblocks(n, 64);
	uint8_t data[R * C];
	float scales[64], nested[4], work[64];
	struct lq_qbuf qb = {data, scales, nested, 0};
	CHECK_OK(lq_quantize_ref(&p, x, n, &qb, work), &e);
	struct lq_tensor t = {.name = "w", .qtype = qtype, .src_dtype = LQ_DTYPE_F32, .block_size = 64,
			      .double_quant = dq, .ndim = 2, .shape = {R, C}, .offset = qb.offset};
	CHECK_OK(lq_writer_add_tensor(w, &t, data, scales, nested, &e), &e);
	uint16_t bias[5] = {0x3f80, 0x4000, 0, 0x8000, 0xbf80};
	struct lq_tensor b = {.name = "b", .qtype = LQ_QTYPE_NONE, .src_dtype = LQ_DTYPE_BF16, .ndim = 1, .shape = {5}};
	CHECK_OK(lq_writer_add_tensor(w, &b, bias, NULL, NULL, &e), &e);
	struct lq_tensor s = {.name = "scalar", .qtype = LQ_QTYPE_NONE, .src_dtype = LQ_DTYPE_F32, .ndim = 0};
	float one = 1.0f;
	CHECK_OK(lq_writer_add_tensor(w, &s, &one, NULL, NULL, &e), &e);
	CHECK(lq_writer_add_tensor(w, &s, &one, NULL, NULL, &e) == LQ_ERR_INVALID, "duplicate name refused");
	CHECK_OK(lq_writer_finish(w, "{\"format\": \"lq\"}", &e), &e);
	lq_writer_free(w);
	off_t end = lseek(fd, 0, SEEK_END);
	unsigned char *buf = malloc((size_t)end);
	CHECK(pread(fd, buf, (size_t)end, 0) == end);
	close(fd);
	*size = (size_t)end;
	(void)nb;
	return buf;
}

int main(void)
{
	struct lq_error e = {0};
	for (int q = LQ_QTYPE_NF4; q <= LQ_QTYPE_INT8; q++)
		for (int dq = 0; dq <= 1; dq++) {
			size_t n;
			unsigned char *img = make_image(&n, q, dq);
			struct lq_file *f = NULL;
			CHECK_OK(lq_file_parse(&f, img, n, "mem.lq", &e), &e);
			if (!f) {
				free(img);
				continue;
			}
			CHECK(lq_file_count(f) == 3 && lq_file_nblobs(f) == 2);
			const struct lq_tensor *t = lq_file_find(f, "w");
			CHECK(t && t->qtype == q && t->double_quant == dq && t->nelem == 33 * 64 && t->shape[0] == 33);
			CHECK(t && t->data_off % 256 == 0 && (t->scale_off % 256) == 0);
			CHECK(t && lq_tensor_verify(t, &e) == 0);
			/* dequantized values match the reference on the same buffers */
			float y[33 * 64], yr[33 * 64];
			struct lq_qparams p;
			struct lq_qbuf qb;
			lq_tensor_qparams(t, &p);
			lq_tensor_qbuf(t, &qb);
			CHECK_OK(lq_tensor_to_f32(t, y, 2, &e), &e);
			lq_dequantize_ref(&p, &qb, t->nelem, yr);
			CHECK(memcmp(y, yr, sizeof y) == 0, "dequant through the file == reference");
			const struct lq_tensor *b = lq_file_find(f, "b");
			CHECK(b && b->qtype == LQ_QTYPE_NONE && b->data_size == 10 && b->nelem == 5);
			const struct lq_tensor *s = lq_file_find(f, "scalar");
			CHECK(s && s->ndim == 0 && s->nelem == 1 && *(const float *)s->data == 1.0f);
			const struct lq_blob *c = lq_file_find_blob(f, "config.json");
			CHECK(c && c->size == 39 && memcmp(c->data, "{\"arch", 6) == 0 && lq_blob_verify(c, &e) == 0);
			const struct lq_blob *em = lq_file_find_blob(f, "empty.json");
			CHECK(em && em->size == 0 && lq_blob_verify(em, &e) == 0);
			size_t ml;
			CHECK(strcmp(lq_file_metadata(f, &ml), "{\"format\": \"lq\"}") == 0 && ml == 16);
			CHECK(lq_file_version(f) == 1000);
			lq_file_close(f);
			/* same input, same bytes */
			size_t n2;
			unsigned char *img2 = make_image(&n2, q, dq);
			CHECK(n == n2 && memcmp(img, img2, n) == 0, "deterministic");
			free(img2);
			/* every single-bit flip outside tensor data is rejected at open or
			   caught by verify; none crashes (ASan watches) */
			if (q == LQ_QTYPE_NF4 && dq) {
				int undetected = 0;
				for (size_t i = 0; i < n; i++) {
					img[i] ^= 0x10;
					struct lq_file *g = NULL;
					if (lq_file_parse(&g, img, n, "flip", &e) == 0) {
						int fine = 1;
						for (size_t k = 0; k < lq_file_count(g); k++)
							fine &= lq_tensor_verify(lq_file_get(g, k), &e) == 0;
						for (size_t k = 0; k < lq_file_nblobs(g); k++)
							fine &= lq_blob_verify(lq_file_blob(g, k), &e) == 0;
						/* only padding bytes may flip unnoticed */
						if (fine && img[i] != 0x10)
							undetected++;
						lq_file_close(g);
					}
					img[i] ^= 0x10;
				}
				CHECK(undetected == 0, "%d flips of non-padding bytes went unnoticed", undetected);
				/* every truncation is rejected */
				int accepted = 0;
				for (size_t k = 0; k < n; k++) {
					struct lq_file *g = NULL;
					if (lq_file_parse(&g, img, k, "trunc", &e) == 0)
						accepted++;
					lq_file_close(g);
				}
				CHECK(accepted == 0, "%d truncations accepted", accepted);
			}
			free(img);
		}
	/* writer rejects parts that do not fit */
	int fd = memfd_create("lq", 0);
	struct lq_writer *w = NULL;
	CHECK_OK(lq_writer_create(&w, fd, "x", &e), &e);
	struct lq_tensor bad = {.name = "x", .qtype = LQ_QTYPE_NF4, .src_dtype = LQ_DTYPE_F32, .block_size = 48,
				.ndim = 1, .shape = {64}};
	uint8_t z[64] = {0};
	CHECK(lq_writer_add_tensor(w, &bad, z, z, NULL, &e) == LQ_ERR_INVALID);
	CHECK(lq_writer_finish(w, "[1]", &e) == LQ_ERR_INVALID, "metadata must be an object");
	lq_writer_free(w);
	close(fd);
	CHECK(lq_file_open(&(struct lq_file *){0}, "/nonexistent.lq", &e) == LQ_ERR_IO);
	return test_summary();
}
