/* fuzz_safetensors.c - libFuzzer target for the safetensors parser (make fuzz). */
#include "libquant.h"

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct lq_st *st = NULL;
	struct lq_error e;
	if (lq_st_parse(&st, data, size, "fuzz", &e) == 0) {
		/* touch every tensor's bytes: they must lie inside the buffer */
		volatile uint8_t sink = 0;
		for (size_t i = 0; i < lq_st_count(st); i++) {
			const struct lq_st_tensor *t = lq_st_get(st, i);
			if (t->nbytes)
				sink ^= ((const uint8_t *)t->data)[0] ^ ((const uint8_t *)t->data)[t->nbytes - 1];
			(void)lq_st_find(st, t->name);
		}
		(void)sink;
	}
	lq_st_close(st);
	return 0;
}
