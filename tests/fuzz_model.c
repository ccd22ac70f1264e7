/* fuzz_model.c - libFuzzer target for config.json parsing and everything built
 * from it: tree text and JSON, footprints, .lq estimate, RoPE (make fuzz). */
#include "libquant.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct lq_model *m = NULL;
	struct lq_error e;
	if (lq_model_from_config(&m, (const char *)data, size, &e) == 0) {
		char *s = NULL;
		struct lq_footprint fp;
		uint64_t est;
		struct lq_qparams q = {LQ_QTYPE_NF4, 64, 1};
		lq_model_plan(m, &q, LQ_DTYPE_BF16);
		if (lq_model_tree_text(m, &s, NULL, &e) == 0)
			free(s);
		s = NULL;
		if (lq_model_tree_json(m, 0, &s, &e) == 0)
			free(s);
		(void)lq_model_footprint(m, &fp, &e);
		(void)lq_model_estimate_lq(m, NULL, 0, 0, &est, &e);
		const struct lq_model_config *c = lq_model_config(m);
		float *f = malloc((size_t)c->rope.rotary_dim / 2 * sizeof *f + sizeof *f);
		if (f) {
			double sc;
			lq_rope_inv_freq(c, c->max_position_embeddings * 2, f, &sc);
			free(f);
		}
	}
	lq_model_free(m);
	return 0;
}
