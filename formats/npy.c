/* npy.c - write float32 arrays as NumPy .npy (format version 1.0). */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int write_all(int fd, const void *p, size_t n, const char *label, struct lq_error *err)
{
	const char *b = p;
	while (n) {
		ssize_t k = write(fd, b, n > (1u << 30) ? (1u << 30) : n);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return lq_fail_errno(err, k < 0 ? errno : EIO, "%s: write", label);
		b += k;
		n -= (size_t)k;
	}
	return LQ_OK;
}

int lq_npy_write_f32(int fd, const float *x, int ndim, const uint64_t *shape, const char *label,
		     struct lq_error *err)
{
	if (ndim < 0 || ndim > LQ_MAX_DIMS)
		return lq_fail(err, LQ_ERR_INVALID, "%s: bad rank %d", label, ndim);
	char dict[512];
	int n = snprintf(dict, sizeof dict, "{'descr': '<f4', 'fortran_order': False, 'shape': (");
	uint64_t count = 1;
	for (int i = 0; i < ndim; i++) {
		n += snprintf(dict + n, sizeof dict - (size_t)n, "%llu,%s", (unsigned long long)shape[i],
			      i + 1 < ndim ? " " : "");
		if (!lq_mul_u64(count, shape[i], &count))
			return lq_fail(err, LQ_ERR_INVALID, "%s: shape overflows", label);
	}
	if (ndim > 1) /* (a, b,) -> (a, b) as numpy writes it */
		n--;
	n += snprintf(dict + n, sizeof dict - (size_t)n, "), }");
	/* magic(6) + version(2) + len(2) + dict + spaces + '\n', total multiple of 64 */
	size_t total = 10 + (size_t)n + 1;
	size_t padded = (total + 63) / 64 * 64;
	unsigned char hdr[640];
	memcpy(hdr, "\x93NUMPY\x01\x00", 8);
	lq_wr16(hdr + 8, (uint16_t)(padded - 10));
	memcpy(hdr + 10, dict, (size_t)n);
	memset(hdr + 10 + n, ' ', padded - total);
	hdr[padded - 1] = '\n';
	int rc = write_all(fd, hdr, padded, label, err);
	if (!rc)
		rc = write_all(fd, x, (size_t)count * 4, label, err);
	return rc;
}
