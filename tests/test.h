/* test.h - a tiny test harness: CHECK macros and a final "N passed, N failed" line. */
#ifndef LQ_TEST_H
#define LQ_TEST_H

#include "libquant.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int t_pass, t_fail;

#define CHECK(cond, ...)                                                      \
	do {                                                                  \
		if (cond) {                                                   \
			t_pass++;                                             \
		} else {                                                      \
			t_fail++;                                             \
			fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
			fprintf(stderr, " " __VA_ARGS__);                      \
			fputc('\n', stderr);                                  \
		}                                                             \
	} while (0)

#define CHECK_OK(expr, errp)                                                  \
	do {                                                                  \
		int rc_ = (expr);                                             \
		CHECK(rc_ == 0, "%s -> %d (%s)", #expr, rc_, test_errmsg(errp)); \
	} while (0)

static inline const char *test_errmsg(const struct lq_error *e)
{
	return e ? e->msg : "";
}

/* Directory of the shared fixtures, or NULL when absent (tests then skip). */
static inline const char *test_shared_dir(void)
{
	const char *d = getenv("LQ_SHARED");
	return d && *d ? d : "../shared";
}

static inline int test_summary(void)
{
	printf("%d passed, %d failed\n", t_pass, t_fail);
	return t_fail ? 1 : 0;
}

#endif
