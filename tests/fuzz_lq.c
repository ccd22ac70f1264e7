/* fuzz_lq.c - libFuzzer target for the LQ reader (make fuzz). */
#include "libquant.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct lq_file *f = NULL;
	struct lq_error e;
	if (lq_file_parse(&f, data, size, "fuzz", &e) == 0) {
		for (size_t i = 0; i < lq_file_nblobs(f); i++)
			(void)lq_blob_verify(lq_file_blob(f, i), &e);
		for (size_t i = 0; i < lq_file_count(f); i++) {
			const struct lq_tensor *t = lq_file_get(f, i);
			(void)lq_tensor_verify(t, &e);
			(void)lq_file_find(f, t->name);
			/* dequantizing a validated tensor must stay in bounds */
			if (t->nelem <= 4096) {
				float *y = malloc((size_t)(t->nelem ? t->nelem : 1) * sizeof *y);
				if (y)
					(void)lq_tensor_to_f32(t, y, 1, &e);
				free(y);
			}
		}
	}
	lq_file_close(f);
	return 0;
}
