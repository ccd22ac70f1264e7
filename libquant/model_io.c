/*
 * model_io.c - model descriptions of opened checkpoints and LQ files (the
 * glue between lq_model and the readers of formats/).
 *
 * SPDX-License-Identifier: MIT
 * Copyright (c) the libquant authors
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

void lq_model_plan_quant(struct lq_model *m, const struct lq_qparams *q, int quantize_head)
{
	for (size_t i = 0; i < lq_model_nparams(m); i++) {
		const struct lq_model_param *p = lq_model_param(m, i);
		struct lq_model_storage s = {p->st.dtype, LQ_QTYPE_NONE, 0, 0};
		int want = p->quantize_default || (quantize_head && p->role == LQ_ROLE_LM_HEAD && !p->tied);
		if (q && q->qtype != LQ_QTYPE_NONE && want) {
			s.qtype = q->qtype;
			s.block_size = q->block_size;
			s.double_quant = q->double_quant;
		}
		/* cannot fail: dtype comes from the parameter, q was checked by the caller
		 * (an unusable q leaves the parameter as it was) */
		(void)lq_model_set_storage(m, i, &s, NULL);
	}
}

static int validate_and_free(struct lq_model *m, struct lq_model_tensor *t, size_t n,
			 struct lq_error *err)
{
	int rc = lq_model_validate(m, t, n, err);
	free(t);
	return rc;
}

int lq_model_from_st(struct lq_model **out, const char *config, size_t len,
		     const struct lq_st *st, struct lq_error *err)
{
	struct lq_model *m = NULL;
	*out = NULL;
	int rc = lq_model_from_config(&m, config, len, err);
	if (rc)
		return rc;
	size_t n = lq_st_count(st);
	struct lq_model_tensor *t = calloc(n ? n : 1, sizeof *t);
	if (!t) {
		lq_model_free(m);
		return lq_fail(err, LQ_ERR_NOMEM, "out of memory");
	}
	for (size_t i = 0; i < n; i++) {
		const struct lq_st_tensor *s = lq_st_get(st, i);
		t[i].name = s->name;
		t[i].ndim = s->ndim;
		memcpy(t[i].shape, s->shape, sizeof t[i].shape);
		t[i].dtype = s->dtype;
		t[i].qtype = LQ_QTYPE_NONE;
	}
	if ((rc = validate_and_free(m, t, n, err))) {
		lq_model_free(m);
		return rc;
	}
	*out = m;
	return LQ_OK;
}

int lq_model_from_lq(struct lq_model **out, const struct lq_file *f, struct lq_error *err)
{
	struct lq_model *m = NULL;
	*out = NULL;
	const struct lq_blob *b = lq_file_find_blob(f, "config.json");
	if (!b)
		return lq_fail(err, LQ_ERR_NOTFOUND, "the LQ file stores no config.json");
	int rc = lq_model_from_config(&m, (const char *)b->data, (size_t)b->size, err);
	if (rc)
		return rc;
	size_t n = lq_file_count(f);
	struct lq_model_tensor *t = calloc(n ? n : 1, sizeof *t);
	if (!t) {
		lq_model_free(m);
		return lq_fail(err, LQ_ERR_NOMEM, "out of memory");
	}
	for (size_t i = 0; i < n; i++) {
		const struct lq_tensor *s = lq_file_get(f, i);
		t[i].name = s->name;
		t[i].ndim = s->ndim;
		memcpy(t[i].shape, s->shape, sizeof t[i].shape);
		t[i].dtype = s->src_dtype;
		t[i].qtype = s->qtype;
		t[i].block_size = s->block_size;
		t[i].double_quant = s->double_quant;
	}
	if ((rc = validate_and_free(m, t, n, err))) {
		lq_model_free(m);
		return rc;
	}
	*out = m;
	return LQ_OK;
}
