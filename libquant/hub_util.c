/* hub_util.c - pure helpers of the hub module: pattern matching as
 * huggingface_hub, name validation, cache folder names, etags, blob hashes. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Match one bracket expression at pat (pointing at '[').  Returns the
 * length of the expression (>0) and sets *hit, or 0 when the '[' is a
 * literal (unclosed), as Python's fnmatch.translate. */
static size_t bracket(const char *pat, unsigned char c, int *hit)
{
	size_t j = 1;
	if (pat[j] == '!')
		j++;
	if (pat[j] == ']')
		j++;
	while (pat[j] && pat[j] != ']')
		j++;
	if (!pat[j])
		return 0;
	/* content is pat[1 .. j-1] */
	size_t k = 1;
	int neg = 0;
	if (pat[k] == '!') {
		neg = 1;
		k++;
	}
	int in = 0;
	while (k < j) {
		unsigned char lo = (unsigned char)pat[k];
		/* a range lo-hi, unless '-' is the last character of the class */
		if (k + 2 < j && pat[k + 1] == '-') {
			unsigned char hi = (unsigned char)pat[k + 2];
			if (lo <= hi && c >= lo && c <= hi)
				in = 1;
			k += 3;
		} else {
			if (c == lo)
				in = 1;
			k++;
		}
	}
	*hit = neg ? !in : in;
	return j + 1;
}

int lq_hub_fnmatch(const char *pat, const char *name)
{
	const char *p = pat, *n = name;
	const char *star_p = NULL, *star_n = NULL;
	for (;;) {
		if (*p == '*') {
			while (*p == '*')
				p++;
			star_p = p;
			star_n = n;
			continue;
		}
		if (!*n) {
			if (!*p)
				return 1;
			goto backtrack;
		}
		if (*p == '?') {
			p++;
			n++;
			continue;
		}
		if (*p == '[') {
			int hit = 0;
			size_t len = bracket(p, (unsigned char)*n, &hit);
			if (len) {
				if (!hit)
					goto backtrack;
				p += len;
				n++;
				continue;
			}
			/* literal '[' */
		}
		if (*p && *p == *n) {
			p++;
			n++;
			continue;
		}
backtrack:
		if (!star_p || !*star_n)
			return 0;
		p = star_p;
		n = ++star_n;
	}
}

/* Copy s to a malloc'ed string with '\' -> '/' and, when dir_star, a
 * trailing '/' extended with '*'.  NULL on OOM. */
static char *norm(const char *s, int dir_star)
{
	size_t n = strlen(s);
	char *r = malloc(n + 2);
	if (!r)
		return NULL;
	for (size_t i = 0; i < n; i++)
		r[i] = s[i] == '\\' ? '/' : s[i];
	r[n] = 0;
	if (dir_star && n && r[n - 1] == '/') {
		r[n] = '*';
		r[n + 1] = 0;
	}
	return r;
}

static int any_match(const char *path, const char *const *pats, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		char *p = norm(pats[i], 1);
		if (!p)
			return -1;
		int m = lq_hub_fnmatch(p, path);
		free(p);
		if (m)
			return 1;
	}
	return 0;
}

int lq_hub_path_selected(const char *path, const char *const *include, size_t n_include,
			 const char *const *exclude, size_t n_exclude)
{
	char *p = norm(path, 0);
	if (!p)
		return 0;
	int keep = 1;
	if (n_include && any_match(p, include, n_include) != 1)
		keep = 0;
	if (keep && n_exclude && any_match(p, exclude, n_exclude) != 0)
		keep = 0;
	free(p);
	return keep;
}

static int id_char(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '_' || c == '.' || c == '-';
}

int lq_hub_check_repo_id(const char *id, struct lq_error *err)
{
	if (!id || !*id)
		return lq_fail(err, LQ_ERR_INVALID, "empty repo id");
	const char *slash = strchr(id, '/');
	const char *name = slash ? slash + 1 : id;
	if (slash && (slash == id || strchr(name, '/')))
		return lq_fail(err, LQ_ERR_INVALID,
			       "invalid repo id '%s': use 'name' or 'namespace/name'", id);
	size_t n = strlen(name), ns = slash ? (size_t)(slash - id) : 0;
	if (n < 1 || n > 96 || ns > 96)
		return lq_fail(err, LQ_ERR_INVALID, "invalid repo id '%s': bad length", id);
	for (const char *c = id; *c; c++)
		if (c != slash && !id_char(*c))
			return lq_fail(err, LQ_ERR_INVALID,
				       "invalid repo id '%s': only letters, digits, '-', '_' and '.'",
				       id);
	if (strstr(id, "--") || strstr(id, ".."))
		return lq_fail(err, LQ_ERR_INVALID, "invalid repo id '%s': '--' and '..' are forbidden",
			       id);
	const char *parts[2] = {slash ? id : name, name};
	size_t lens[2] = {slash ? ns : n, n};
	for (int i = 0; i < 2; i++) {
		char a = parts[i][0], z = parts[i][lens[i] - 1];
		if (a == '-' || a == '.' || z == '-' || z == '.')
			return lq_fail(err, LQ_ERR_INVALID,
				       "invalid repo id '%s': cannot start or end with '-' or '.'", id);
	}
	if (n >= 4 && !strcmp(name + n - 4, ".git"))
		return lq_fail(err, LQ_ERR_INVALID, "invalid repo id '%s': cannot end in .git", id);
	return LQ_OK;
}

int lq_hub_check_filename(const char *f, struct lq_error *err)
{
	if (!f || !*f)
		return lq_fail(err, LQ_ERR_INVALID, "empty file name");
	if (strlen(f) > 4000)
		return lq_fail(err, LQ_ERR_INVALID, "file name too long");
	if (f[0] == '/')
		return lq_fail(err, LQ_ERR_INVALID, "invalid file name '%s': absolute path", f);
	for (const char *c = f; *c; c++)
		if ((unsigned char)*c < 0x20 || *c == 0x7f || *c == '\\')
			return lq_fail(err, LQ_ERR_INVALID,
				       "invalid file name '%s': control character or backslash", f);
	const char *s = f;
	for (;;) {
		const char *e = strchr(s, '/');
		size_t len = e ? (size_t)(e - s) : strlen(s);
		if (len == 0)
			return lq_fail(err, LQ_ERR_INVALID, "invalid file name '%s': empty path segment",
				       f);
		if ((len == 1 && s[0] == '.') || (len == 2 && s[0] == '.' && s[1] == '.'))
			return lq_fail(err, LQ_ERR_INVALID, "invalid file name '%s': '.' or '..' segment",
				       f);
		if (len >= 2 && s[1] == ':')
			return lq_fail(err, LQ_ERR_INVALID, "invalid file name '%s': drive letter", f);
		if (!e)
			break;
		s = e + 1;
	}
	return LQ_OK;
}

int lq_hub_repo_folder(char *buf, size_t size, const char *type, const char *id)
{
	if (!type)
		type = "model";
	if (strcmp(type, "model") && strcmp(type, "dataset") && strcmp(type, "space"))
		return LQ_ERR_INVALID;
	size_t o = 0;
	int n = snprintf(buf, size, "%ss--", type);
	if (n < 0 || (size_t)n >= size)
		return LQ_ERR_INVALID;
	o = (size_t)n;
	for (const char *c = id; *c; c++) {
		size_t need = *c == '/' ? 2 : 1;
		if (o + need >= size)
			return LQ_ERR_INVALID;
		if (*c == '/') {
			buf[o++] = '-';
			buf[o++] = '-';
		} else {
			buf[o++] = *c;
		}
	}
	buf[o] = 0;
	return LQ_OK;
}

int lq_hub_normalize_etag(const char *etag, char *buf, size_t size)
{
	if (!size)
		return 0;
	buf[0] = 0;
	if (!etag)
		return 0;
	while (*etag == ' ')
		etag++;
	/* Python: etag.lstrip("W/").strip('"') */
	while (*etag == 'W' || *etag == '/')
		etag++;
	while (*etag == '"')
		etag++;
	size_t n = strlen(etag);
	while (n && (etag[n - 1] == '"' || etag[n - 1] == ' ' || etag[n - 1] == '\r' ||
		     etag[n - 1] == '\n'))
		n--;
	if (n >= size)
		return 0;
	memcpy(buf, etag, n);
	buf[n] = 0;
	if (n != 40 && n != 64)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!((buf[i] >= '0' && buf[i] <= '9') || (buf[i] >= 'a' && buf[i] <= 'f')))
			return 0;
	return 1;
}

int lq_hub_hash_file(const char *path, int git_sha1, char hex[65], uint64_t *size_out,
		     struct lq_error *err)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return lq_fail_errno(err, errno, "%s", path);
	struct stat st;
	if (fstat(fd, &st) < 0) {
		int e = errno;
		close(fd);
		return lq_fail_errno(err, e, "%s", path);
	}
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	if (!ctx || !EVP_DigestInit_ex(ctx, git_sha1 ? EVP_sha1() : EVP_sha256(), NULL)) {
		EVP_MD_CTX_free(ctx);
		close(fd);
		return lq_fail(err, LQ_ERR_NOMEM, "%s: cannot start hash", path);
	}
	if (git_sha1) {
		char hdr[40];
		int n = snprintf(hdr, sizeof hdr, "blob %llu", (unsigned long long)st.st_size);
		EVP_DigestUpdate(ctx, hdr, (size_t)n + 1);
	}
	size_t bufsz = 1 << 20;
	unsigned char *buf = malloc(bufsz);
	int rc = LQ_OK;
	uint64_t total = 0;
	if (!buf)
		rc = lq_fail(err, LQ_ERR_NOMEM, "%s: out of memory", path);
	while (!rc) {
		ssize_t r = read(fd, buf, bufsz);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			rc = lq_fail_errno(err, errno, "%s", path);
			break;
		}
		if (r == 0)
			break;
		EVP_DigestUpdate(ctx, buf, (size_t)r);
		total += (uint64_t)r;
	}
	free(buf);
	close(fd);
	if (!rc) {
		unsigned char md[32];
		unsigned int mdlen = 0;
		EVP_DigestFinal_ex(ctx, md, &mdlen);
		for (unsigned i = 0; i < mdlen; i++)
			snprintf(hex + 2 * i, 3, "%02x", md[i]);
		if (size_out)
			*size_out = total;
	}
	EVP_MD_CTX_free(ctx);
	return rc;
}
