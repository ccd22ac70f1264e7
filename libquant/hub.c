/*
 * hub.c - Hugging Face Hub client: resolve, download, verify, cache.
 *
 * Follows shared/docs/hub-protocol.md.  Layout of the cache (section 4):
 *   <cache>/CACHEDIR.TAG
 *   <cache>/.locks/<folder>/<etag>.lock            flock'ed around download + link
 *   <cache>/<folder>/blobs/<etag>                  verified content only
 *   <cache>/<folder>/blobs/<etag>.incomplete       resumable partial, contiguous (under
 *                                                  the lock; Python <= 1.17 resumes it too)
 *   <cache>/<folder>/blobs/<etag>.chunked.incomplete  partial of a ranged download (holes)
 *   <cache>/<folder>/blobs/<etag>.chunked.map      its chunk map
 *   <cache>/<folder>/refs/<revision>               40-hex commit, no newline
 *   <cache>/<folder>/snapshots/<commit>/<path>     relative symlink to ../../blobs/<etag>
 *   <cache>/<folder>/.no_exist/<commit>/<path>     empty marker for a missing file
 *
 * Threads: one CURL easy handle per worker thread (connection reuse within
 * a worker); opt->jobs workers take files from a shared list; a large file
 * is split into chunks downloaded by up to opt->connections threads.
 */
#include "internal.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <limits.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_HOPS 10
#define MAX_API_BODY (256u << 20)
#define MAX_ERR_BODY 4096

/* ------------------------------------------------------------ context */

struct hub {
	const struct lq_hub_options *o;
	char *endpoint;         /* no trailing slash */
	char origin[512];       /* scheme://host:port of the endpoint */
	const char *type;       /* model, dataset, space */
	const char *prefix;     /* "", "datasets/", "spaces/" */
	const char *repo_id;
	const char *rev;
	char *cache;            /* absolute cache root (cache mode) */
	char *repo_dir;         /* <cache>/<folder> */
	char *lock_dir;         /* <cache>/.locks/<folder> */
	char *local;            /* absolute local_dir or NULL */
	int jobs, conns, retries;
	double delay, timeout;
	uint64_t chunk, chunk_min;
	char ua[128];
	CURLSH *share;          /* DNS and TLS sessions shared by the workers */
	pthread_mutex_t share_mu[CURL_LOCK_DATA_LAST];
	pthread_mutex_t mu;     /* callbacks and the fields below */
	uint64_t total;
	int files_done, files_total;
	double last_report;
	atomic_ullong done;
	atomic_int cancel;
};

struct fjob {
	char *path;            /* path in the repo */
	char etag[65];         /* from the tree listing or HEAD; "" if unknown */
	uint64_t size;
	int have_meta;
	atomic_ullong done;    /* bytes on disk */
	int gone;              /* rc is a 404 EntryNotFound / RevisionNotFound from resolve */
	int rc;
	struct lq_error err;
};

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_s(struct hub *h, double s)
{
	/* sleep in slices so that a cancel is noticed */
	double end = now_s() + s;
	for (;;) {
		double left = end - now_s();
		if (left <= 0 || atomic_load(&h->cancel))
			return;
		if (left > 0.1)
			left = 0.1;
		struct timespec ts = {(time_t)left, (long)((left - (double)(time_t)left) * 1e9)};
		nanosleep(&ts, NULL);
	}
}

static char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *xasprintf(const char *fmt, ...)
{
	va_list ap;
	char *s = NULL;
	va_start(ap, fmt);
	int n = vasprintf(&s, fmt, ap);
	va_end(ap);
	return n < 0 ? NULL : s;
}

static void hlog(struct hub *h, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void hlog(struct hub *h, const char *fmt, ...)
{
	if (!h->o->log)
		return;
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	pthread_mutex_lock(&h->mu);
	h->o->log(h->o->log_ctx, buf);
	pthread_mutex_unlock(&h->mu);
}

static void report(struct hub *h, struct fjob *fj, int force)
{
	if (!h->o->progress)
		return;
	pthread_mutex_lock(&h->mu);
	double t = now_s();
	if (force || t - h->last_report >= 0.1) {
		h->last_report = t;
		struct lq_hub_progress p = {
			.file = fj ? fj->path : NULL,
			.file_done = fj ? atomic_load(&fj->done) : 0,
			.file_total = fj ? fj->size : 0,
			.done = atomic_load(&h->done),
			.total = h->total,
			.files_done = h->files_done,
			.files_total = h->files_total,
			.finished = force == 2,
		};
		if (h->o->progress(h->o->progress_ctx, &p))
			atomic_store(&h->cancel, 1);
	}
	pthread_mutex_unlock(&h->mu);
}

static void add_done(struct hub *h, struct fjob *fj, int64_t d)
{
	atomic_fetch_add(&h->done, (unsigned long long)d);
	if (fj)
		atomic_fetch_add(&fj->done, (unsigned long long)d);
}

static int is_hex(const char *s, size_t n)
{
	if (strlen(s) != n)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return 0;
	return 1;
}

/* ------------------------------------------------------------ files */

static int mkdir_p(const char *path)
{
	char *p = strdup(path);
	if (!p)
		return ENOMEM;
	for (char *s = p + 1; *s; s++) {
		if (*s != '/')
			continue;
		*s = 0;
		if (mkdir(p, 0777) < 0 && errno != EEXIST) {
			int e = errno;
			free(p);
			return e;
		}
		*s = '/';
	}
	int e = 0;
	if (mkdir(p, 0777) < 0 && errno != EEXIST)
		e = errno;
	free(p);
	return e;
}

static int mkdir_parent(const char *path)
{
	char *p = strdup(path);
	if (!p)
		return ENOMEM;
	char *s = strrchr(p, '/');
	int e = 0;
	if (s && s != p) {
		*s = 0;
		e = mkdir_p(p);
	}
	free(p);
	return e;
}

static int file_exists(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Write data to path atomically (tmp + rename).  0 or errno. */
static int write_atomic(const char *path, const char *data, size_t len)
{
	char *tmp = xasprintf("%s.%08x.tmp", path, (unsigned)(getpid() ^ (unsigned)(uintptr_t)&len ^
								(unsigned)time(NULL)));
	if (!tmp)
		return ENOMEM;
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
	int e = 0;
	if (fd < 0) {
		e = errno;
		free(tmp);
		return e;
	}
	size_t o = 0;
	while (o < len) {
		ssize_t w = write(fd, data + o, len - o);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			e = errno;
			break;
		}
		o += (size_t)w;
	}
	if (close(fd) < 0 && !e)
		e = errno;
	if (!e && rename(tmp, path) < 0)
		e = errno;
	if (e)
		unlink(tmp);
	free(tmp);
	return e;
}

/* Read a small text file (refs, metadata) into a malloc'ed string. */
static char *read_small(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	char *buf = malloc(4097);
	ssize_t n = buf ? read(fd, buf, 4096) : -1;
	close(fd);
	if (n < 0) {
		free(buf);
		return NULL;
	}
	buf[n] = 0;
	return buf;
}

static void strip(char *s)
{
	size_t n = strlen(s);
	while (n && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t'))
		s[--n] = 0;
	size_t i = 0;
	while (s[i] == ' ' || s[i] == '\t' || s[i] == '\n')
		i++;
	memmove(s, s + i, n - i + 1);
}

static void cachedir_tag(struct hub *h)
{
	char *p = xasprintf("%s/CACHEDIR.TAG", h->cache);
	if (!p)
		return;
	if (access(p, F_OK) != 0) {
		static const char tag[] =
			"Signature: 8a477f597d28d172789f06886806bc55\n"
			"# This file is a cache directory tag created by huggingface_hub.\n"
			"# For information about cache directory tags, see:\n"
			"#\thttps://bford.info/cachedir/\n";
		write_atomic(p, tag, sizeof tag - 1);
	}
	free(p);
}

/* refs/<rev> := commit, only once snapshots/<commit>/ exists (section 4.4). */
static int write_ref(struct hub *h, const char *commit, struct lq_error *err)
{
	if (!strcmp(h->rev, commit) || h->local)
		return LQ_OK;
	char *ref = xasprintf("%s/refs/%s", h->repo_dir, h->rev);
	if (!ref)
		return lq_fail(err, LQ_ERR_NOMEM, "out of memory");
	char *cur = read_small(ref);
	int rc = LQ_OK;
	if (!cur || strcmp(cur, commit)) {
		int e = mkdir_parent(ref);
		if (!e)
			e = write_atomic(ref, commit, strlen(commit));
		if (e)
			rc = lq_fail_errno(err, e, "%s", ref);
	}
	free(cur);
	free(ref);
	return rc;
}

static void mark_no_exist(struct hub *h, const char *commit, const char *path)
{
	if (h->local)
		return;
	char *p = xasprintf("%s/.no_exist/%s/%s", h->repo_dir, commit, path);
	if (p && !mkdir_parent(p)) {
		int fd = open(p, O_WRONLY | O_CREAT | O_CLOEXEC, 0666);
		if (fd >= 0)
			close(fd);
	}
	free(p);
}

/* ------------------------------------------------------------ locks */

static int lock_take(struct hub *h, const char *path, int *fdp, struct lq_error *err)
{
	*fdp = -1;
	int e = mkdir_parent(path);
	if (e)
		return lq_fail_errno(err, e, "%s", path);
	double start = now_s(), next_note = start + 10;
	for (;;) {
		if (atomic_load(&h->cancel))
			return lq_fail(err, LQ_ERR_INTERRUPTED, "cancelled");
		int fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0664);
		if (fd < 0)
			return lq_fail_errno(err, errno, "lock %s", path);
		fchmod(fd, 0664);
		if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
			struct stat a, b;
			if (fstat(fd, &a) == 0 && a.st_nlink > 0 && stat(path, &b) == 0 &&
			    a.st_ino == b.st_ino && a.st_dev == b.st_dev) {
				*fdp = fd;
				return LQ_OK;
			}
			close(fd);
			continue;
		}
		int fe = errno;
		close(fd);
		if (fe == ENOLCK || fe == ENOSYS || fe == EOPNOTSUPP || fe == EINVAL) {
			hlog(h, "warning: cannot lock %s (%s); continuing without a lock", path,
			     strerror(fe));
			return LQ_OK;
		}
		if (fe != EWOULDBLOCK && fe != EINTR)
			return lq_fail_errno(err, fe, "lock %s", path);
		double t = now_s();
		if (h->o->lock_timeout > 0 && t - start > h->o->lock_timeout)
			return lq_fail(err, LQ_ERR_IO, "timed out after %g s waiting for lock %s",
				       h->o->lock_timeout, path);
		if (t >= next_note) {
			hlog(h, "still waiting to acquire lock on %s", path);
			next_note = t + 10;
		}
		unsigned seed = (unsigned)(t * 1e6) ^ (unsigned)getpid();
		sleep_s(h, 0.05 + (double)(rand_r(&seed) % 50) / 1000.0);
	}
}

static void lock_release(const char *path, int fd)
{
	if (fd < 0)
		return;
	unlink(path);
	flock(fd, LOCK_UN);
	close(fd);
}

/* ------------------------------------------------------------ URLs */

static char *quote(const char *s, int keep_slash)
{
	size_t n = strlen(s);
	char *r = malloc(3 * n + 1);
	if (!r)
		return NULL;
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		    c == '_' || c == '.' || c == '-' || c == '~' || (keep_slash && c == '/'))
			r[o++] = (char)c;
		else
			o += (size_t)sprintf(r + o, "%%%02X", c);
	}
	r[o] = 0;
	return r;
}

/* scheme://host:port of url into buf; 0 on success. */
static int url_origin(const char *url, char *buf, size_t size)
{
	CURLU *u = curl_url();
	if (!u)
		return -1;
	char *scheme = NULL, *host = NULL, *port = NULL;
	int rc = -1;
	if (!curl_url_set(u, CURLUPART_URL, url, 0) &&
	    !curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) &&
	    !curl_url_get(u, CURLUPART_HOST, &host, 0) &&
	    !curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT)) {
		for (char *c = host; *c; c++)
			if (*c >= 'A' && *c <= 'Z')
				*c = (char)(*c - 'A' + 'a');
		int n = snprintf(buf, size, "%s://%s:%s", scheme, host, port);
		rc = n > 0 && (size_t)n < size ? 0 : -1;
	}
	curl_free(scheme);
	curl_free(host);
	curl_free(port);
	curl_url_cleanup(u);
	return rc;
}

static int same_origin(struct hub *h, const char *url)
{
	char o[512];
	return url_origin(url, o, sizeof o) == 0 && !strcmp(o, h->origin);
}

static const char *url_host(const char *url, char *buf, size_t size)
{
	const char *p = strstr(url, "://");
	p = p ? p + 3 : url;
	size_t n = strcspn(p, "/?#");
	if (n >= size)
		n = size - 1;
	memcpy(buf, p, n);
	buf[n] = 0;
	return buf;
}

/* ------------------------------------------------------------ HTTP */

struct sink;

struct resp {
	long status;
	char *location, *etag, *linked_etag, *commit, *content_range, *error_code,
		*error_message, *retry_after, *ratelimit, *request_id, *link;
	int64_t linked_size, content_length;
	char *body;
	size_t len, cap, max;
	struct sink *sink;
	struct hub *h;
};

/* A download target: body bytes of a 2xx response go to fd at off. */
struct sink {
	int fd;
	uint64_t off;        /* next write offset */
	uint64_t end;        /* writes must stay below this */
	uint64_t start;      /* the offset asked for with Range */
	uint64_t total;      /* expected file size */
	int ranged;          /* a Range header was sent */
	int chunk;           /* a bounded chunk: 206 and exact Content-Range required */
	uint64_t chunk_end;  /* last byte of the chunk (inclusive) */
	EVP_MD_CTX *md;      /* streaming hash or NULL */
	int git_sha1;
	uint64_t got;        /* bytes written by this request */
	int started, rejected, restarted, werr, no_range;
	unsigned char head[16]; /* first bytes of the file as received */
	char why[160];
	struct fjob *fj;
};

static void resp_clear(struct resp *r)
{
	free(r->location);
	free(r->etag);
	free(r->linked_etag);
	free(r->commit);
	free(r->content_range);
	free(r->error_code);
	free(r->error_message);
	free(r->retry_after);
	free(r->ratelimit);
	free(r->request_id);
	free(r->link);
	r->location = r->etag = r->linked_etag = r->commit = r->content_range = r->error_code =
		r->error_message = r->retry_after = r->ratelimit = r->request_id = r->link = NULL;
	r->linked_size = r->content_length = -1;
	r->status = 0;
	r->len = 0;
	if (r->body)
		r->body[0] = 0;
}

static void resp_free(struct resp *r)
{
	resp_clear(r);
	free(r->body);
	r->body = NULL;
	r->cap = 0;
}

static size_t on_header(char *buf, size_t size, size_t n, void *ud)
{
	struct resp *r = ud;
	size_t len = size * n;
	if (len >= 5 && !strncmp(buf, "HTTP/", 5)) {
		resp_clear(r);
		const char *sp = memchr(buf, ' ', len);
		if (sp)
			r->status = strtol(sp + 1, NULL, 10);
		return len;
	}
	const char *colon = memchr(buf, ':', len);
	if (!colon)
		return len;
	size_t nl = (size_t)(colon - buf);
	const char *v = colon + 1;
	size_t vl = len - nl - 1;
	while (vl && (*v == ' ' || *v == '\t')) {
		v++;
		vl--;
	}
	while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
		vl--;
	static const struct {
		const char *name;
		size_t off;
	} tab[] = {
		{"location", offsetof(struct resp, location)},
		{"etag", offsetof(struct resp, etag)},
		{"x-linked-etag", offsetof(struct resp, linked_etag)},
		{"x-repo-commit", offsetof(struct resp, commit)},
		{"content-range", offsetof(struct resp, content_range)},
		{"x-error-code", offsetof(struct resp, error_code)},
		{"x-error-message", offsetof(struct resp, error_message)},
		{"retry-after", offsetof(struct resp, retry_after)},
		{"ratelimit", offsetof(struct resp, ratelimit)},
		{"x-request-id", offsetof(struct resp, request_id)},
		{"link", offsetof(struct resp, link)},
	};
	for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++) {
		if (strlen(tab[i].name) == nl && !strncasecmp(buf, tab[i].name, nl)) {
			char **slot = (char **)((char *)r + tab[i].off);
			free(*slot);
			*slot = strndup(v, vl);
			return len;
		}
	}
	if (nl == 13 && !strncasecmp(buf, "x-linked-size", 13))
		r->linked_size = strtoll(v, NULL, 10);
	else if (nl == 14 && !strncasecmp(buf, "content-length", 14))
		r->content_length = strtoll(v, NULL, 10);
	return len;
}

static int body_append(struct resp *r, const char *p, size_t n)
{
	if (r->len + n > r->max)
		return -1;
	if (r->len + n + 1 > r->cap) {
		size_t c = r->cap ? r->cap : 4096;
		while (c < r->len + n + 1)
			c *= 2;
		char *b = realloc(r->body, c);
		if (!b)
			return -1;
		r->body = b;
		r->cap = c;
	}
	memcpy(r->body + r->len, p, n);
	r->len += n;
	r->body[r->len] = 0;
	return 0;
}

static void md_restart(struct sink *s)
{
	if (!s->md)
		return;
	EVP_DigestInit_ex(s->md, s->git_sha1 ? EVP_sha1() : EVP_sha256(), NULL);
	if (s->git_sha1) {
		char hdr[40];
		int n = snprintf(hdr, sizeof hdr, "blob %llu", (unsigned long long)s->total);
		EVP_DigestUpdate(s->md, hdr, (size_t)n + 1);
	}
}

/* Parse "bytes a-b/total" (or "bytes * /total"); missing parts = -1. */
static void parse_crange(const char *v, int64_t *a, int64_t *b, int64_t *total)
{
	*a = *b = *total = -1;
	if (!v || strncasecmp(v, "bytes ", 6))
		return;
	v += 6;
	char *e;
	if (*v != '*') {
		*a = strtoll(v, &e, 10);
		if (*e != '-') {
			*a = -1;
			return;
		}
		*b = strtoll(e + 1, &e, 10);
		v = e;
	} else {
		v++;
	}
	if (*v == '/' && v[1] != '*')
		*total = strtoll(v + 1, NULL, 10);
}

/* Check a download response before its first body byte is stored. */
static int sink_start(struct sink *s, struct resp *r)
{
	s->started = 1;
	if (r->status == 206) {
		int64_t a, b, t;
		parse_crange(r->content_range, &a, &b, &t);
		if (s->chunk) {
			if (a != (int64_t)s->start || b != (int64_t)s->chunk_end ||
			    t != (int64_t)s->total) {
				snprintf(s->why, sizeof s->why,
					 "bad Content-Range '%s' for bytes=%llu-%llu",
					 r->content_range ? r->content_range : "",
					 (unsigned long long)s->start,
					 (unsigned long long)s->chunk_end);
				return -1;
			}
		} else if (!s->ranged || a != (int64_t)s->start || t != (int64_t)s->total) {
			snprintf(s->why, sizeof s->why, "bad Content-Range '%s' when resuming at %llu",
				 r->content_range ? r->content_range : "",
				 (unsigned long long)s->start);
			return -1;
		}
		return 0;
	}
	if (r->status == 200) {
		if (s->chunk) {
			s->no_range = 1;
			snprintf(s->why, sizeof s->why, "server ignored Range");
			return -1;
		}
		if (s->ranged && s->start > 0) {
			/* the server ignored Range: start over (never append a 200 body) */
			if (ftruncate(s->fd, 0) < 0) {
				s->werr = errno;
				return -1;
			}
			s->off = 0;
			s->restarted = 1;
			md_restart(s);
		}
		return 0;
	}
	return 0;
}

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
	struct resp *r = ud;
	size_t len = size * n;
	struct sink *s = r->sink;
	if (!s || r->status < 200 || r->status >= 300) {
		/* API body or an error page: keep (bounded) */
		if (body_append(r, p, len) < 0)
			return s ? len : 0; /* an error page may be truncated */
		return len;
	}
	if (!s->started && sink_start(s, r) < 0) {
		s->rejected = 1;
		return 0;
	}
	if (s->restarted) {
		s->restarted = 0;
		/* progress: forget what was on disk */
		uint64_t d = atomic_load(&s->fj->done);
		add_done(r->h, s->fj, -(int64_t)d);
	}
	if (s->off + len > s->end) {
		snprintf(s->why, sizeof s->why, "server sent more than %llu bytes",
			 (unsigned long long)(s->end - s->start));
		s->rejected = 1;
		return 0;
	}
	for (size_t i = 0; s->off + i < sizeof s->head && i < len; i++)
		s->head[s->off + i] = (unsigned char)p[i];
	size_t o = 0;
	while (o < len) {
		ssize_t w = pwrite(s->fd, p + o, len - o, (off_t)(s->off + o));
		if (w < 0) {
			if (errno == EINTR)
				continue;
			s->werr = errno;
			return 0;
		}
		o += (size_t)w;
	}
	if (s->md)
		EVP_DigestUpdate(s->md, p, len);
	s->off += len;
	s->got += len;
	add_done(r->h, s->fj, (int64_t)len);
	report(r->h, s->fj, 0);
	return len;
}

static int on_xfer(void *ud, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d)
{
	struct hub *h = ud;
	return atomic_load(&h->cancel) ? 1 : 0;
}

static void share_lock(CURL *c, curl_lock_data d, curl_lock_access a, void *ud)
{
	struct hub *h = ud;
	if ((int)d >= 0 && d < CURL_LOCK_DATA_LAST)
		pthread_mutex_lock(&h->share_mu[d]);
}

static void share_unlock(CURL *c, curl_lock_data d, void *ud)
{
	struct hub *h = ud;
	if ((int)d >= 0 && d < CURL_LOCK_DATA_LAST)
		pthread_mutex_unlock(&h->share_mu[d]);
}

static void share_init(struct hub *h)
{
	for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
		pthread_mutex_init(&h->share_mu[i], NULL);
	h->share = curl_share_init();
	if (!h->share)
		return;
	curl_share_setopt(h->share, CURLSHOPT_LOCKFUNC, share_lock);
	curl_share_setopt(h->share, CURLSHOPT_UNLOCKFUNC, share_unlock);
	curl_share_setopt(h->share, CURLSHOPT_USERDATA, h);
	curl_share_setopt(h->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
	curl_share_setopt(h->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
}

static void share_release(struct hub *h)
{
	if (h->share)
		curl_share_cleanup(h->share);
	h->share = NULL;
	for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
		pthread_mutex_destroy(&h->share_mu[i]);
}

static CURL *handle_new(struct hub *h)
{
	CURL *c = curl_easy_init();
	if (!c)
		return NULL;
	if (h->share)
		curl_easy_setopt(c, CURLOPT_SHARE, h->share);
	curl_easy_setopt(c, CURLOPT_USERAGENT, h->ua);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(c, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)(h->timeout * 1000));
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, (long)(h->timeout < 1 ? 1 : h->timeout));
	curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(c, CURLOPT_BUFFERSIZE, 512L * 1024);
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_xfer);
	curl_easy_setopt(c, CURLOPT_XFERINFODATA, h);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	if (h->o->proxy)
		curl_easy_setopt(c, CURLOPT_PROXY, h->o->proxy);
	if (h->o->noproxy)
		curl_easy_setopt(c, CURLOPT_NOPROXY, h->o->noproxy);
	if (h->o->ca_file)
		curl_easy_setopt(c, CURLOPT_CAINFO, h->o->ca_file);
	if (h->o->ca_path)
		curl_easy_setopt(c, CURLOPT_CAPATH, h->o->ca_path);
	return c;
}

/* One request, no redirect following.  Returns the CURLcode. */
static CURLcode perform(struct hub *h, CURL *c, int head, const char *url, const char *range,
			struct resp *r, char *errbuf)
{
	struct curl_slist *hd = NULL;
	char line[4200];
	if (h->o->token && *h->o->token && same_origin(h, url)) {
		snprintf(line, sizeof line, "Authorization: Bearer %s", h->o->token);
		hd = curl_slist_append(hd, line);
	}
	if (head)
		hd = curl_slist_append(hd, "Accept-Encoding: identity");
	if (range) {
		snprintf(line, sizeof line, "Range: %s", range);
		hd = curl_slist_append(hd, line);
	}
	resp_clear(r);
	r->h = h;
	errbuf[0] = 0;
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, hd);
	if (head) {
		curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
	} else {
		curl_easy_setopt(c, CURLOPT_NOBODY, 0L);
		curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
	}
	curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
	CURLcode cc = curl_easy_perform(c);
	long st = 0;
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &st);
	if (st)
		r->status = st;
	if (h->o->verbose) {
		hlog(h, "%s %s%s%s -> %ld%s%s", head ? "HEAD" : "GET", url, range ? " " : "",
		     range ? range : "", r->status, cc ? " " : "", cc ? curl_easy_strerror(cc) : "");
	}
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, NULL);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, NULL);
	curl_slist_free_all(hd);
	return cc;
}

static int retryable_status(long st)
{
	return st == 408 || st == 429 || st == 500 || st == 502 || st == 503 || st == 504;
}

static int retryable_curl(CURLcode cc)
{
	switch (cc) {
	case CURLE_COULDNT_CONNECT:
	case CURLE_OPERATION_TIMEDOUT:
	case CURLE_RECV_ERROR:
	case CURLE_SEND_ERROR:
	case CURLE_PARTIAL_FILE:
	case CURLE_GOT_NOTHING:
	case CURLE_HTTP2:
	case CURLE_HTTP2_STREAM:
	case CURLE_SSL_CONNECT_ERROR:
		return 1;
	default:
		return 0;
	}
}

/* Seconds to wait before retry number `attempt` (0-based) after response r. */
static double backoff(struct hub *h, int attempt, const struct resp *r)
{
	if (r && r->status == 429) {
		/* RateLimit: "api";r=0;t=55  -> t + 1 */
		if (r->ratelimit) {
			const char *rp = strstr(r->ratelimit, ";r=");
			const char *tp = strstr(r->ratelimit, ";t=");
			if (rp && tp && atoll(rp + 3) == 0) {
				double t = (double)atoll(tp + 3) + 1;
				return t > 300 ? 300 : t;
			}
		}
		if (r->retry_after && r->retry_after[0] >= '0' && r->retry_after[0] <= '9') {
			double t = (double)atoll(r->retry_after);
			return t > 300 ? 300 : t;
		}
	}
	if (r && r->retry_after && r->status >= 500 && r->retry_after[0] >= '0' &&
	    r->retry_after[0] <= '9') {
		double t = (double)atoll(r->retry_after);
		return t > 300 ? 300 : t;
	}
	double cap = h->delay > 8 ? h->delay : 8;
	double d = h->delay;
	for (int i = 0; i < attempt && d < cap; i++)
		d *= 2;
	if (d > cap)
		d = cap;
	/* full jitter in [d/2, d] */
	unsigned seed = (unsigned)(now_s() * 1e6) ^ (unsigned)(uintptr_t)&d;
	return d * (0.5 + 0.5 * (double)(rand_r(&seed) % 1000) / 1000.0);
}

/* Map an HTTP error response to an lq error with a clear message. */
static int map_error(struct hub *h, const struct resp *r, const char *url, const char *file,
		     struct lq_error *err)
{
	char host[256];
	const char *code = r->error_code ? r->error_code : "";
	const char *msg = r->error_message ? r->error_message : "";
	char rid[160] = "";
	if (r->request_id)
		snprintf(rid, sizeof rid, " (request id %s)", r->request_id);
	int tok = h->o->token && *h->o->token;
	if (!strcmp(code, "RevisionNotFound"))
		return lq_fail(err, LQ_ERR_NOTFOUND, "revision '%s' not found in %s '%s'", h->rev,
			       h->type, h->repo_id);
	if (!strcmp(code, "EntryNotFound"))
		return lq_fail(err, LQ_ERR_NOTFOUND, "file '%s' not found in %s '%s' at revision '%s'",
			       file ? file : "?", h->type, h->repo_id, h->rev);
	if (!strcmp(code, "GatedRepo")) {
		if (tok)
			return lq_fail(err, LQ_ERR_AUTH,
				       "%s '%s' is gated and your token is not in the authorized list: "
				       "visit %s/%s%s to ask for access",
				       h->type, h->repo_id, h->endpoint, h->prefix, h->repo_id);
		return lq_fail(err, LQ_ERR_AUTH,
			       "%s '%s' is gated: accept its licence on %s/%s%s, then set a token "
			       "(HF_TOKEN or --token)",
			       h->type, h->repo_id, h->endpoint, h->prefix, h->repo_id);
	}
	if (!strcmp(msg, "Access to this resource is disabled."))
		return lq_fail(err, LQ_ERR_AUTH, "%s '%s' is disabled", h->type, h->repo_id);
	if (r->status == 401 && !strcmp(msg, "Invalid credentials in Authorization header"))
		return lq_fail(err, LQ_ERR_AUTH, "invalid or expired token (401 from %s)",
			       url_host(url, host, sizeof host));
	if (!strcmp(code, "RepoNotFound") || r->status == 401)
		return lq_fail(err, LQ_ERR_NOTFOUND,
			       tok ? "%s '%s' not found, or your token has no access to it"
				   : "%s '%s' not found (if it is private or gated, set a token: "
				     "HF_TOKEN or --token)",
			       h->type, h->repo_id);
	if (r->status == 403)
		return lq_fail(err, LQ_ERR_AUTH, "forbidden (403) from %s%s%s%s",
			       url_host(url, host, sizeof host), *msg ? ": " : "", msg, rid);
	if (r->status == 404)
		return lq_fail(err, LQ_ERR_NOTFOUND, "%s: not found (404) from %s%s",
			       file ? file : h->repo_id, url_host(url, host, sizeof host), rid);
	if (r->status == 429)
		return lq_fail(err, LQ_ERR_NETWORK, "rate limited (429) by %s%s%s: retry later%s",
			       url_host(url, host, sizeof host), r->ratelimit ? ", " : "",
			       r->ratelimit ? r->ratelimit : "", rid);
	return lq_fail(err, LQ_ERR_NETWORK, "%s%sHTTP %ld from %s%s%s%s", file ? file : "",
		       file ? ": " : "", r->status, url_host(url, host, sizeof host),
		       *msg ? ": " : "", msg, rid);
}

static int curl_error(struct hub *h, CURLcode cc, const char *url, const char *errbuf,
		      const char *file, struct lq_error *err)
{
	char host[256];
	if (cc == CURLE_ABORTED_BY_CALLBACK || atomic_load(&h->cancel))
		return lq_fail(err, LQ_ERR_INTERRUPTED, "cancelled");
	return lq_fail(err, LQ_ERR_NETWORK, "%s%scannot download from %s: %s", file ? file : "",
		       file ? ": " : "", url_host(url, host, sizeof host),
		       errbuf && *errbuf ? errbuf : curl_easy_strerror(cc));
}

/*
 * GET an API URL (JSON) with retries, following same-origin redirects.
 * The body is in r->body.
 */
static int api_get(struct hub *h, CURL *c, const char *url0, struct resp *r, struct lq_error *err)
{
	char errbuf[CURL_ERROR_SIZE];
	char *url = strdup(url0);
	if (!url)
		return lq_fail(err, LQ_ERR_NOMEM, "out of memory");
	r->max = MAX_API_BODY;
	r->sink = NULL;
	int attempt = 0, hops = 0, rc;
	for (;;) {
		CURLcode cc = perform(h, c, 0, url, NULL, r, errbuf);
		if (cc) {
			if (retryable_curl(cc) && attempt < h->retries && !atomic_load(&h->cancel)) {
				sleep_s(h, backoff(h, attempt++, NULL));
				continue;
			}
			rc = curl_error(h, cc, url, errbuf, NULL, err);
			break;
		}
		if (r->status >= 300 && r->status < 400) {
			char *next = NULL;
			curl_easy_getinfo(c, CURLINFO_REDIRECT_URL, &next);
			if (!next || ++hops > MAX_HOPS) {
				rc = lq_fail(err, LQ_ERR_NETWORK, "too many redirects from %s", url);
				break;
			}
			char *n2 = strdup(next);
			free(url);
			url = n2;
			if (!url)
				return lq_fail(err, LQ_ERR_NOMEM, "out of memory");
			continue;
		}
		if (retryable_status(r->status) && attempt < h->retries && !atomic_load(&h->cancel)) {
			double w = backoff(h, attempt++, r);
			hlog(h, "HTTP %ld from the hub, retrying in %.1f s", r->status, w);
			sleep_s(h, w);
			continue;
		}
		if (r->status >= 200 && r->status < 300) {
			rc = LQ_OK;
			break;
		}
		rc = map_error(h, r, url, NULL, err);
		break;
	}
	free(url);
	return rc;
}

/* ------------------------------------------------------------ API */

static char *api_base(struct hub *h)
{
	return xasprintf("%s/api/%ss/%s", h->endpoint, h->type, h->repo_id);
}

/* Commit sha of h->rev from /api/<type>s/<id>/revision/<rev>. */
static int get_commit(struct hub *h, CURL *c, char commit[41], struct lq_error *err)
{
	char *base = api_base(h), *qrev = quote(h->rev, 0);
	char *url = base && qrev ? xasprintf("%s/revision/%s", base, qrev) : NULL;
	free(base);
	free(qrev);
	if (!url)
		return lq_fail(err, LQ_ERR_NOMEM, "out of memory");
	struct resp r = {0};
	int rc = api_get(h, c, url, &r, err);
	if (!rc) {
		json_error_t je;
		json_t *j = json_loadb(r.body ? r.body : "", r.len, 0, &je);
		const char *sha = j ? json_string_value(json_object_get(j, "sha")) : NULL;
		if (!sha || !is_hex(sha, 40))
			rc = lq_fail(err, LQ_ERR_FORMAT, "%s: no commit sha in the answer", url);
		else
			memcpy(commit, sha, 41);
		json_decref(j);
	}
	resp_free(&r);
	free(url);
	return rc;
}

/* The next URL of a Link header (rel="next"), malloc'ed, or NULL. */
static char *link_next(const char *link)
{
	while (link && *link) {
		const char *lt = strchr(link, '<');
		if (!lt)
			return NULL;
		const char *gt = strchr(lt, '>');
		if (!gt)
			return NULL;
		const char *end = strchr(gt, ',');
		size_t seg = end ? (size_t)(end - gt) : strlen(gt);
		const char *rel = strstr(gt, "rel=\"next\"");
		if (rel && (size_t)(rel - gt) < seg)
			return strndup(lt + 1, (size_t)(gt - lt - 1));
		link = end ? end + 1 : NULL;
	}
	return NULL;
}

struct filelist {
	struct fjob *v;
	size_t n, cap;
};

static void filelist_free(struct filelist *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->v[i].path);
	free(l->v);
	l->v = NULL;
	l->n = l->cap = 0;
}

/* The files of commit.  *rev_gone is set when the hub answers 404
 * RevisionNotFound for the commit. */
static int list_tree(struct hub *h, CURL *c, const char *commit, struct filelist *out,
		     int *rev_gone, struct lq_error *err)
{
	*rev_gone = 0;
	char *base = api_base(h);
	char *url = base ? xasprintf("%s/tree/%s?recursive=true&expand=false", base, commit) : NULL;
	free(base);
	if (!url)
		return lq_fail(err, LQ_ERR_NOMEM, "out of memory");
	int rc = LQ_OK, pages = 0;
	struct resp r = {0};
	while (url && !rc) {
		if (++pages > 100000) {
			rc = lq_fail(err, LQ_ERR_FORMAT, "tree listing does not end");
			break;
		}
		rc = api_get(h, c, url, &r, err);
		if (rc) {
			*rev_gone = rc == LQ_ERR_NOTFOUND && r.status == 404 && r.error_code &&
				    !strcmp(r.error_code, "RevisionNotFound");
			break;
		}
		json_error_t je;
		json_t *j = json_loadb(r.body ? r.body : "", r.len, 0, &je);
		if (!json_is_array(j)) {
			json_decref(j);
			rc = lq_fail(err, LQ_ERR_FORMAT, "%s: tree listing is not a JSON array", url);
			break;
		}
		size_t i;
		json_t *e;
		json_array_foreach(j, i, e) {
			const char *type = json_string_value(json_object_get(e, "type"));
			if (!type || strcmp(type, "file"))
				continue;
			const char *path = json_string_value(json_object_get(e, "path"));
			const char *oid = json_string_value(json_object_get(e, "oid"));
			json_t *lfs = json_object_get(e, "lfs");
			const char *loid = json_string_value(json_object_get(lfs, "oid"));
			json_t *sz = json_object_get(e, "size");
			if (!path || !json_is_integer(sz) || json_integer_value(sz) < 0) {
				rc = lq_fail(err, LQ_ERR_FORMAT, "tree listing: bad entry %zu", i);
				break;
			}
			if (lq_hub_check_filename(path, NULL)) {
				rc = lq_fail(err, LQ_ERR_FORMAT, "tree listing: unsafe file name '%s'",
					     path);
				break;
			}
			if (out->n == out->cap) {
				size_t nc = out->cap ? out->cap * 2 : 64;
				struct fjob *nv = realloc(out->v, nc * sizeof *nv);
				if (!nv) {
					rc = lq_fail(err, LQ_ERR_NOMEM, "out of memory");
					break;
				}
				out->v = nv;
				out->cap = nc;
			}
			struct fjob *f = &out->v[out->n];
			memset(f, 0, sizeof *f);
			f->path = strdup(path);
			if (!f->path) {
				rc = lq_fail(err, LQ_ERR_NOMEM, "out of memory");
				break;
			}
			out->n++;
			f->size = (uint64_t)json_integer_value(sz);
			const char *tag = loid ? loid : oid;
			if (tag && lq_hub_normalize_etag(tag, f->etag, sizeof f->etag))
				f->have_meta = 1;
			else
				f->etag[0] = 0;
		}
		json_decref(j);
		char *next = link_next(r.link);
		free(url);
		url = next;
	}
	free(url);
	resp_free(&r);
	return rc;
}

/* ------------------------------------------------------------ resolve */

struct meta {
	char commit[41];
	char etag[65];
	uint64_t size;
	char *location; /* where to GET the content */
	int gone;       /* the answer was 404 EntryNotFound or RevisionNotFound */
};

/*
 * HEAD /resolve/<rev>/<path>, following same-origin redirects (section
 * 1.4.2).  On EntryNotFound with X-Repo-Commit, m->commit is still set.
 */
static int resolve_meta(struct hub *h, CURL *c, const char *rev, const char *path, struct meta *m,
			struct lq_error *err)
{
	memset(m, 0, sizeof *m);
	char *qrev = quote(rev, 0), *qpath = quote(path, 1);
	char *url = qrev && qpath ? xasprintf("%s/%s%s/resolve/%s/%s", h->endpoint, h->prefix,
					      h->repo_id, qrev, qpath)
				  : NULL;
	free(qrev);
	free(qpath);
	if (!url)
		return lq_fail(err, LQ_ERR_NOMEM, "out of memory");
	struct resp r = {.max = MAX_ERR_BODY};
	char errbuf[CURL_ERROR_SIZE];
	int rc, attempt = 0, hops = 0, redirect = 0;
	for (;;) {
		CURLcode cc = perform(h, c, 1, url, NULL, &r, errbuf);
		if (cc) {
			if (retryable_curl(cc) && attempt < h->retries && !atomic_load(&h->cancel)) {
				sleep_s(h, backoff(h, attempt++, NULL));
				continue;
			}
			rc = curl_error(h, cc, url, errbuf, path, err);
			goto out;
		}
		if (r.commit && is_hex(r.commit, 40))
			memcpy(m->commit, r.commit, 41);
		if (r.status >= 300 && r.status < 400) {
			char *next = NULL;
			curl_easy_getinfo(c, CURLINFO_REDIRECT_URL, &next);
			if (!next) {
				rc = lq_fail(err, LQ_ERR_NETWORK, "%s: redirect without Location", path);
				goto out;
			}
			if (same_origin(h, next)) {
				if (++hops > MAX_HOPS) {
					rc = lq_fail(err, LQ_ERR_NETWORK, "%s: too many redirects", path);
					goto out;
				}
				char *n2 = strdup(next);
				free(url);
				url = n2;
				if (!url) {
					rc = lq_fail(err, LQ_ERR_NOMEM, "out of memory");
					goto out;
				}
				continue;
			}
			m->location = strdup(next);
			redirect = 1;
			break;
		}
		if (retryable_status(r.status) && attempt < h->retries && !atomic_load(&h->cancel)) {
			double w = backoff(h, attempt++, &r);
			hlog(h, "HTTP %ld for %s, retrying in %.1f s", r.status, path, w);
			sleep_s(h, w);
			continue;
		}
		if (r.status < 200 || r.status >= 300) {
			m->gone = r.status == 404 && r.error_code &&
				  (!strcmp(r.error_code, "EntryNotFound") ||
				   !strcmp(r.error_code, "RevisionNotFound"));
			rc = map_error(h, &r, url, path, err);
			goto out;
		}
		m->location = strdup(url);
		break;
	}
	if (!m->location) {
		rc = lq_fail(err, LQ_ERR_NOMEM, "out of memory");
		goto out;
	}
	if (!m->commit[0]) {
		if (is_hex(rev, 40)) {
			memcpy(m->commit, rev, 41);
		} else {
			rc = lq_fail(err, LQ_ERR_FORMAT,
				     "%s: no X-Repo-Commit header in the answer (a proxy stripped the "
				     "Hub's headers?)",
				     path);
			goto out;
		}
	}
	const char *tag = r.linked_etag ? r.linked_etag : r.etag;
	if (!lq_hub_normalize_etag(tag, m->etag, sizeof m->etag)) {
		rc = lq_fail(err, LQ_ERR_FORMAT, "%s: missing or invalid ETag '%s' in the answer", path,
			     tag ? tag : "");
		goto out;
	}
	if (r.linked_size >= 0)
		m->size = (uint64_t)r.linked_size;
	else if (!redirect && r.content_length >= 0)
		m->size = (uint64_t)r.content_length;
	else {
		rc = lq_fail(err, LQ_ERR_FORMAT, "%s: the answer has no file size", path);
		goto out;
	}
	rc = LQ_OK;
out:
	if (rc) {
		free(m->location);
		m->location = NULL;
	}
	resp_free(&r);
	free(url);
	return rc;
}

/* ------------------------------------------------------------ download */

struct target {
	char *blob;        /* verified content goes here (rename target) */
	char *part;        /* resumable contiguous partial */
	char *cpart;       /* partial of a chunked download (may have holes) */
	char *chunks;      /* chunk map of cpart */
	char *lock;        /* lock file */
};

static void target_free(struct target *t)
{
	free(t->blob);
	free(t->part);
	free(t->cpart);
	free(t->chunks);
	free(t->lock);
}

static int etag_git(const char *etag) { return strlen(etag) == 40; }

/* A body that starts like a web page is probably a proxy or captive portal. */
static const char *html_hint(const unsigned char *head)
{
	const char *h = (const char *)head;
	if (!strncasecmp(h, "<!doctype html", 14) || !strncasecmp(h, "<html", 5))
		return "; the server sent an HTML page: a proxy or captive portal?";
	return "";
}

/* Single stream from the end of the partial file.  *url may be replaced
 * when a redirect is followed. */
static int dl_single(struct hub *h, CURL *c, struct fjob *fj, const struct meta *m, int fd,
		     struct lq_error *err)
{
	struct stat st;
	if (fstat(fd, &st) < 0)
		return lq_fail_errno(err, errno, "%s", fj->path);
	uint64_t have = (uint64_t)st.st_size;
	if (have > m->size) {
		if (ftruncate(fd, 0) < 0)
			return lq_fail_errno(err, errno, "%s", fj->path);
		have = 0;
	}
	struct sink s = {.fd = fd, .total = m->size, .git_sha1 = etag_git(m->etag), .fj = fj};
	s.md = EVP_MD_CTX_new();
	if (!s.md)
		return lq_fail(err, LQ_ERR_NOMEM, "out of memory");
	md_restart(&s);
	int rc = LQ_OK;
	/* hash what is already there */
	if (have) {
		unsigned char *buf = malloc(1 << 20);
		uint64_t o = 0;
		while (buf && o < have) {
			size_t want = have - o > (1 << 20) ? (1 << 20) : (size_t)(have - o);
			ssize_t n = pread(fd, buf, want, (off_t)o);
			if (n <= 0) {
				if (n < 0 && errno == EINTR)
					continue;
				rc = lq_fail_errno(err, n < 0 ? errno : EIO, "%s", fj->path);
				break;
			}
			EVP_DigestUpdate(s.md, buf, (size_t)n);
			o += (uint64_t)n;
		}
		if (!buf)
			rc = lq_fail(err, LQ_ERR_NOMEM, "out of memory");
		free(buf);
		if (!rc && have)
			hlog(h, "resuming %s at %llu of %llu bytes", fj->path, (unsigned long long)have,
			     (unsigned long long)m->size);
	}
	add_done(h, fj, (int64_t)have);
	s.off = have;
	char *url = strdup(m->location);
	struct resp r = {.max = MAX_ERR_BODY, .sink = &s};
	char errbuf[CURL_ERROR_SIZE];
	int attempt = 0, hops = 0;
	uint64_t best = s.off; /* the retry counter restarts only on new progress */
	while (!rc && s.off < m->size) {
		if (!url) {
			rc = lq_fail(err, LQ_ERR_NOMEM, "out of memory");
			break;
		}
		char range[64];
		s.start = s.off;
		s.ranged = s.off > 0;
		s.end = m->size;
		s.got = 0;
		s.started = s.rejected = s.restarted = 0;
		s.why[0] = 0;
		if (s.ranged)
			snprintf(range, sizeof range, "bytes=%llu-", (unsigned long long)s.off);
		CURLcode cc = perform(h, c, 0, url, s.ranged ? range : NULL, &r, errbuf);
		if (s.werr) {
			rc = lq_fail_errno(err, s.werr, "writing %s", fj->path);
			break;
		}
		int progress = s.off > best;
		if (progress) {
			attempt = 0;
			best = s.off;
		}
		if (s.rejected) {
			if (attempt++ < h->retries) {
				hlog(h, "%s: %s, retrying", fj->path, s.why);
				sleep_s(h, backoff(h, attempt - 1, NULL));
				continue;
			}
			rc = lq_fail(err, LQ_ERR_NETWORK, "%s: %s", fj->path, s.why);
			break;
		}
		if (cc) {
			if (retryable_curl(cc) && attempt < h->retries && !atomic_load(&h->cancel)) {
				double w = progress ? 0 : backoff(h, attempt, NULL);
				attempt++;
				if (h->o->verbose)
					hlog(h, "%s: %s, resuming at %llu", fj->path,
					     curl_easy_strerror(cc), (unsigned long long)s.off);
				sleep_s(h, w);
				continue;
			}
			rc = curl_error(h, cc, url, errbuf, fj->path, err);
			break;
		}
		if (r.status >= 300 && r.status < 400) {
			char *next = NULL;
			curl_easy_getinfo(c, CURLINFO_REDIRECT_URL, &next);
			if (!next || ++hops > MAX_HOPS) {
				rc = lq_fail(err, LQ_ERR_NETWORK, "%s: bad redirect", fj->path);
				break;
			}
			free(url);
			url = strdup(next);
			continue;
		}
		if (r.status == 416) {
			int64_t a, b, t;
			parse_crange(r.content_range, &a, &b, &t);
			if (t >= 0 && (uint64_t)t == s.off && s.off == m->size)
				break;
			if (ftruncate(fd, 0) < 0) {
				rc = lq_fail_errno(err, errno, "%s", fj->path);
				break;
			}
			add_done(h, fj, -(int64_t)atomic_load(&fj->done));
			s.off = 0;
			md_restart(&s);
			if (attempt++ < h->retries)
				continue;
			rc = lq_fail(err, LQ_ERR_NETWORK, "%s: 416 range not satisfiable", fj->path);
			break;
		}
		if (retryable_status(r.status) && attempt < h->retries && !atomic_load(&h->cancel)) {
			double w = backoff(h, attempt++, &r);
			hlog(h, "HTTP %ld for %s, retrying in %.1f s", r.status, fj->path, w);
			sleep_s(h, w);
			continue;
		}
		if (r.status < 200 || r.status >= 300) {
			rc = map_error(h, &r, url, fj->path, err);
			break;
		}
		if (s.off < m->size) {
			/* clean end of a short body: treat as a cut connection */
			if (attempt++ < h->retries) {
				sleep_s(h, progress ? 0 : backoff(h, attempt - 1, NULL));
				continue;
			}
			rc = lq_fail(err, LQ_ERR_NETWORK,
				     "%s: transfer ended at %llu of %llu bytes%s", fj->path,
				     (unsigned long long)s.off, (unsigned long long)m->size,
				     html_hint(s.head));
		}
	}
	if (!rc) {
		unsigned char md[32];
		unsigned int mdlen = 0;
		char hex[65];
		EVP_DigestFinal_ex(s.md, md, &mdlen);
		for (unsigned i = 0; i < mdlen; i++)
			snprintf(hex + 2 * i, 3, "%02x", md[i]);
		if (s.off != m->size)
			rc = lq_fail(err, LQ_ERR_CHECKSUM, "%s: size %llu, expected %llu", fj->path,
				     (unsigned long long)s.off, (unsigned long long)m->size);
		else if (strcmp(hex, m->etag))
			rc = lq_fail(err, LQ_ERR_CHECKSUM,
				     "%s: %s mismatch: got %s, expected %s (corrupt download%s)",
				     fj->path, s.git_sha1 ? "git SHA-1" : "SHA-256", hex, m->etag,
				     html_hint(s.head));
	}
	EVP_MD_CTX_free(s.md);
	resp_free(&r);
	free(url);
	return rc;
}

/* ---- chunked download */

struct chunked {
	struct hub *h;
	struct fjob *fj;
	const struct meta *m;
	int fd, sfd;          /* data file, sidecar */
	uint64_t csize, n;    /* chunk size, count */
	unsigned char *state; /* '1' = done */
	uint64_t hdr;         /* sidecar header length */
	uint64_t next;        /* next chunk index to look at */
	pthread_mutex_t mu;
	int rc, no_range;
	struct lq_error err;
};

static int chunk_fetch(struct chunked *k, CURL *c, uint64_t idx, struct lq_error *err)
{
	struct hub *h = k->h;
	uint64_t a = idx * k->csize;
	uint64_t b = a + k->csize - 1;
	if (b >= k->m->size)
		b = k->m->size - 1;
	struct sink s = {.fd = k->fd, .total = k->m->size, .chunk = 1, .fj = k->fj};
	struct resp r = {.max = MAX_ERR_BODY, .sink = &s};
	char errbuf[CURL_ERROR_SIZE];
	char *url = strdup(k->m->location);
	uint64_t off = a;
	int attempt = 0, hops = 0, rc = LQ_OK;
	while (off <= b) {
		if (!url) {
			rc = lq_fail(err, LQ_ERR_NOMEM, "out of memory");
			break;
		}
		if (atomic_load(&h->cancel)) {
			rc = lq_fail(err, LQ_ERR_INTERRUPTED, "cancelled");
			break;
		}
		char range[80];
		snprintf(range, sizeof range, "bytes=%llu-%llu", (unsigned long long)off,
			 (unsigned long long)b);
		s.start = off;
		s.off = off;
		s.chunk_end = b;
		s.end = b + 1;
		s.ranged = 1;
		s.got = 0;
		s.started = s.rejected = 0;
		CURLcode cc = perform(h, c, 0, url, range, &r, errbuf);
		off = s.off;
		if (s.werr) {
			rc = lq_fail_errno(err, s.werr, "writing %s", k->fj->path);
			break;
		}
		if (s.no_range) {
			k->no_range = 1;
			rc = lq_fail(err, LQ_ERR_NETWORK, "%s: server ignored Range", k->fj->path);
			break;
		}
		if (s.got)
			attempt = 0;
		if (off > b)
			break;
		if (s.rejected) {
			if (attempt++ < h->retries) {
				sleep_s(h, backoff(h, attempt - 1, NULL));
				continue;
			}
			rc = lq_fail(err, LQ_ERR_NETWORK, "%s: %s", k->fj->path, s.why);
			break;
		}
		if (cc) {
			if (retryable_curl(cc) && attempt < h->retries) {
				double w = s.got ? 0 : backoff(h, attempt, NULL);
				attempt++;
				sleep_s(h, w);
				continue;
			}
			rc = curl_error(h, cc, url, errbuf, k->fj->path, err);
			break;
		}
		if (r.status >= 300 && r.status < 400) {
			char *next = NULL;
			curl_easy_getinfo(c, CURLINFO_REDIRECT_URL, &next);
			if (!next || ++hops > MAX_HOPS) {
				rc = lq_fail(err, LQ_ERR_NETWORK, "%s: bad redirect", k->fj->path);
				break;
			}
			free(url);
			url = strdup(next);
			continue;
		}
		if ((retryable_status(r.status) || (r.status >= 200 && r.status < 300)) &&
		    attempt < h->retries) {
			sleep_s(h, backoff(h, attempt++, &r));
			continue;
		}
		if (r.status >= 200 && r.status < 300)
			rc = lq_fail(err, LQ_ERR_NETWORK, "%s: chunk ended early", k->fj->path);
		else
			rc = map_error(h, &r, url, k->fj->path, err);
		break;
	}
	resp_free(&r);
	free(url);
	return rc;
}

static void *chunk_worker(void *arg)
{
	struct chunked *k = arg;
	struct hub *h = k->h;
	CURL *c = handle_new(h);
	struct lq_error err = {0};
	for (;;) {
		pthread_mutex_lock(&k->mu);
		uint64_t idx = k->n;
		if (!k->rc) {
			while (k->next < k->n && k->state[k->next] == '1')
				k->next++;
			if (k->next < k->n)
				idx = k->next++;
		}
		pthread_mutex_unlock(&k->mu);
		if (idx >= k->n)
			break;
		int rc = c ? chunk_fetch(k, c, idx, &err)
			   : lq_fail(&err, LQ_ERR_NOMEM, "cannot create a curl handle");
		pthread_mutex_lock(&k->mu);
		if (rc) {
			if (!k->rc) {
				k->rc = rc;
				k->err = err;
			}
		} else {
			k->state[idx] = '1';
			if (pwrite(k->sfd, "1", 1, (off_t)(k->hdr + idx)) != 1 && !k->rc)
				k->rc = lq_fail_errno(&k->err, errno, "%s", k->fj->path);
		}
		pthread_mutex_unlock(&k->mu);
		if (rc)
			break;
	}
	curl_easy_cleanup(c);
	return NULL;
}

/* Ranged parallel download.  Returns LQ_OK with *fallback set when the
 * server does not do ranges (the caller then streams). */
static int dl_chunked(struct hub *h, struct fjob *fj, const struct meta *m, int fd,
		      const struct target *t, int *fallback, struct lq_error *err)
{
	*fallback = 0;
	struct chunked k = {.h = h, .fj = fj, .m = m, .fd = fd, .csize = h->chunk};
	k.n = (m->size + k.csize - 1) / k.csize;
	char hdr[128];
	int hl = snprintf(hdr, sizeof hdr, "hf-fetch chunks v1 %llu %llu\n",
			  (unsigned long long)m->size, (unsigned long long)k.csize);
	k.hdr = (uint64_t)hl;
	k.state = malloc(k.n + 1);
	if (!k.state)
		return lq_fail(err, LQ_ERR_NOMEM, "out of memory");
	memset(k.state, '0', k.n);
	struct stat st;
	if (fstat(fd, &st) < 0) {
		free(k.state);
		return lq_fail_errno(err, errno, "%s", t->cpart);
	}
	int sfd = open(t->chunks, O_RDWR | O_CLOEXEC);
	int have_state = 0;
	if (sfd >= 0) {
		char *buf = malloc(k.hdr + k.n);
		if (buf && pread(sfd, buf, k.hdr + k.n, 0) == (ssize_t)(k.hdr + k.n) &&
		    !memcmp(buf, hdr, k.hdr) && (uint64_t)st.st_size == m->size) {
			for (uint64_t i = 0; i < k.n; i++)
				k.state[i] = buf[k.hdr + i] == '1' ? '1' : '0';
			have_state = 1;
		}
		free(buf);
		close(sfd);
	} else if (st.st_size > 0) {
		/* a contiguous partial from a single stream (ours or Python's) */
		uint64_t full = (uint64_t)st.st_size / k.csize;
		for (uint64_t i = 0; i < full && i < k.n; i++)
			k.state[i] = '1';
		if ((uint64_t)st.st_size >= m->size)
			memset(k.state, '1', k.n);
		have_state = 1;
	}
	/* write a fresh sidecar, then size the data file */
	char *tmp = xasprintf("%s.tmp", t->chunks);
	int e = 0;
	sfd = tmp ? open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0666) : -1;
	if (sfd < 0)
		e = tmp ? errno : ENOMEM;
	if (!e && (pwrite(sfd, hdr, k.hdr, 0) != (ssize_t)k.hdr ||
		   pwrite(sfd, k.state, k.n, (off_t)k.hdr) != (ssize_t)k.n))
		e = errno ? errno : EIO;
	if (!e && rename(tmp, t->chunks) < 0)
		e = errno;
	free(tmp);
	if (e) {
		if (sfd >= 0)
			close(sfd);
		free(k.state);
		return lq_fail_errno(err, e, "%s", t->chunks);
	}
	if ((uint64_t)st.st_size < m->size) {
		if (fallocate(fd, 0, st.st_size, (off_t)(m->size - (uint64_t)st.st_size)) < 0 &&
		    (errno == ENOSPC || errno == EDQUOT)) {
			e = errno;
			close(sfd);
			free(k.state);
			return lq_fail_errno(err, e, "%s: cannot reserve %llu bytes", t->cpart,
					     (unsigned long long)m->size);
		}
		if (ftruncate(fd, (off_t)m->size) < 0) {
			e = errno;
			close(sfd);
			free(k.state);
			return lq_fail_errno(err, e, "%s", t->cpart);
		}
	}
	k.sfd = sfd;
	uint64_t already = 0, left = 0;
	for (uint64_t i = 0; i < k.n; i++) {
		uint64_t len = i == k.n - 1 ? m->size - i * k.csize : k.csize;
		if (k.state[i] == '1')
			already += len;
		else
			left++;
	}
	if (have_state && already)
		hlog(h, "resuming %s: %llu of %llu bytes already there", fj->path,
		     (unsigned long long)already, (unsigned long long)m->size);
	add_done(h, fj, (int64_t)already);
	pthread_mutex_init(&k.mu, NULL);
	int nt = h->conns;
	if ((uint64_t)nt > left)
		nt = (int)left;
	pthread_t tid[64];
	if (nt > 64)
		nt = 64;
	int started = 0;
	for (int i = 0; i < nt; i++)
		if (pthread_create(&tid[i], NULL, chunk_worker, &k) == 0)
			started++;
	if (nt && !started)
		chunk_worker(&k);
	for (int i = 0; i < started; i++)
		pthread_join(tid[i], NULL);
	pthread_mutex_destroy(&k.mu);
	close(sfd);
	free(k.state);
	if (k.no_range) {
		hlog(h, "%s: server ignores Range; downloading in one stream", fj->path);
		unlink(t->chunks);
		if (ftruncate(fd, 0) < 0)
			return lq_fail_errno(err, errno, "%s", t->cpart);
		add_done(h, fj, -(int64_t)atomic_load(&fj->done));
		*fallback = 1;
		return LQ_OK;
	}
	if (k.rc) {
		if (err)
			*err = k.err;
		return k.rc;
	}
	/* verify the whole file */
	char hex[65];
	uint64_t got = 0;
	int rc = lq_hub_hash_file(t->cpart, etag_git(m->etag), hex, &got, err);
	if (rc)
		return rc;
	if (got != m->size)
		return lq_fail(err, LQ_ERR_CHECKSUM, "%s: size %llu, expected %llu", fj->path,
			       (unsigned long long)got, (unsigned long long)m->size);
	if (strcmp(hex, m->etag))
		return lq_fail(err, LQ_ERR_CHECKSUM,
			       "%s: %s mismatch: got %s, expected %s (corrupt download)", fj->path,
			       etag_git(m->etag) ? "git SHA-1" : "SHA-256", hex, m->etag);
	return LQ_OK;
}

/* Download m into a partial, verify, rename to t->blob.  Caller holds the lock. */
static int download(struct hub *h, CURL *c, struct fjob *fj, const struct meta *m,
		    const struct target *t, struct lq_error *err)
{
	int rc = LQ_OK;
	int e = mkdir_parent(t->part);
	if (e)
		return lq_fail_errno(err, e, "%s", t->part);
	const char *part = t->part;
	for (int round = 0; round < 2; round++) {
		rc = LQ_OK;
		add_done(h, fj, -(int64_t)atomic_load(&fj->done));
		int chunked = (h->conns > 1 && m->size >= h->chunk_min && m->size > h->chunk) ||
			      access(t->cpart, F_OK) == 0;
		part = chunked ? t->cpart : t->part;
		if (chunked && access(t->cpart, F_OK) != 0 && access(t->part, F_OK) == 0) {
			/* continue a contiguous partial with ranged chunks */
			unlink(t->chunks);
			if (rename(t->part, t->cpart) < 0)
				return lq_fail_errno(err, errno, "rename %s", t->cpart);
		}
		int fd = open(part, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
		if (fd < 0)
			return lq_fail_errno(err, errno, "%s", part);
		int fallback = 1;
		if (chunked)
			rc = dl_chunked(h, fj, m, fd, t, &fallback, err);
		if (!rc && fallback)
			rc = dl_single(h, c, fj, m, fd, err);
		if (!rc && fdatasync(fd) < 0)
			rc = lq_fail_errno(err, errno, "%s", part);
		if (close(fd) < 0 && !rc)
			rc = lq_fail_errno(err, errno, "%s", part);
		if (rc == LQ_ERR_CHECKSUM || rc == LQ_ERR_NOSPACE) {
			unlink(t->part);
			unlink(t->cpart);
			unlink(t->chunks);
			if (rc == LQ_ERR_CHECKSUM && round == 0) {
				hlog(h, "%s; downloading it again", err ? err->msg : "checksum mismatch");
				continue;
			}
		}
		break;
	}
	if (rc)
		return rc;
	if ((e = mkdir_parent(t->blob)))
		return lq_fail_errno(err, e, "%s", t->blob);
	if (rename(part, t->blob) < 0)
		return lq_fail_errno(err, errno, "rename %s", t->blob);
	unlink(t->chunks);
	return LQ_OK;
}

/* ------------------------------------------------------------ linking */

/* Put a real copy of blob at pointer: a hard link if possible, else a
 * copy; through a temporary name and rename, so readers never see half a
 * file.  0 or errno. */
static int place_copy(const char *blob, const char *pointer)
{
	char *tmp = xasprintf("%s.%d.tmp", pointer, (int)getpid());
	if (!tmp)
		return ENOMEM;
	unlink(tmp);
	int e = 0;
	if (link(blob, tmp) < 0) {
		int in = open(blob, O_RDONLY | O_CLOEXEC);
		int out = in < 0 ? -1 : open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
		e = (in < 0 || out < 0) ? errno : 0;
		char buf[65536];
		ssize_t n = 0;
		while (!e && (n = read(in, buf, sizeof buf)) > 0)
			if (write(out, buf, (size_t)n) != n)
				e = errno ? errno : EIO;
		if (!e && n < 0)
			e = errno;
		if (in >= 0)
			close(in);
		if (out >= 0 && close(out) < 0 && !e)
			e = errno;
	}
	if (!e && rename(tmp, pointer) < 0)
		e = errno;
	if (e)
		unlink(tmp);
	free(tmp);
	return e;
}

/* snapshots/<commit>/<path> -> ../../blobs/<etag> (one more ../ per directory). */
static int link_pointer(struct hub *h, const char *blob, const char *etag, const char *pointer,
			const char *path, struct lq_error *err)
{
	int e = mkdir_parent(pointer);
	if (e)
		return lq_fail_errno(err, e, "%s", pointer);
	if (h->o->no_symlinks) {
		e = place_copy(blob, pointer);
		return e ? lq_fail_errno(err, e, "%s", pointer) : LQ_OK;
	}
	size_t depth = 2;
	for (const char *p = path; *p; p++)
		depth += *p == '/';
	size_t tl = depth * 3 + 6 + strlen(etag) + 1;
	char *rel = malloc(tl);
	if (!rel)
		return lq_fail(err, LQ_ERR_NOMEM, "out of memory");
	rel[0] = 0;
	for (size_t i = 0; i < depth; i++)
		strcat(rel, "../");
	strcat(rel, "blobs/");
	strcat(rel, etag);
	int rc = LQ_OK;
	for (int tries = 0; tries < 3; tries++) {
		if (symlink(rel, pointer) == 0)
			break;
		if (errno == EEXIST) {
			char cur[4096];
			ssize_t n = readlink(pointer, cur, sizeof cur - 1);
			if (n >= 0) {
				cur[n] = 0;
				if (!strcmp(cur, rel))
					break;
			}
			unlink(pointer);
			continue;
		}
		if (errno == EPERM || errno == EOPNOTSUPP || errno == ENOSYS) {
			/* no symlinks here: hardlink, else copy (keep the blob) */
			hlog(h, "warning: cannot symlink in %s; copying %s", h->repo_dir, path);
			e = place_copy(blob, pointer);
			if (e)
				rc = lq_fail_errno(err, e, "%s", pointer);
			break;
		}
		rc = lq_fail_errno(err, errno, "symlink %s", pointer);
		break;
	}
	free(rel);
	return rc;
}

/* ------------------------------------------------------------ per file */

static int target_init(struct hub *h, const char *path, const char *etag, struct target *t,
		       struct lq_error *err)
{
	memset(t, 0, sizeof *t);
	if (h->local) {
		t->blob = xasprintf("%s/%s", h->local, path);
		t->part = xasprintf("%s/.cache/huggingface/download/%s.%s.incomplete", h->local, path,
				    etag);
		t->cpart = xasprintf("%s/.cache/huggingface/download/%s.%s.chunked.incomplete",
				     h->local, path, etag);
		t->chunks = xasprintf("%s/.cache/huggingface/download/%s.%s.chunked.map", h->local,
				      path, etag);
		t->lock = xasprintf("%s/.cache/huggingface/download/%s.lock", h->local, path);
	} else {
		t->blob = xasprintf("%s/blobs/%s", h->repo_dir, etag);
		t->part = xasprintf("%s/blobs/%s.incomplete", h->repo_dir, etag);
		t->cpart = xasprintf("%s/blobs/%s.chunked.incomplete", h->repo_dir, etag);
		t->chunks = xasprintf("%s/blobs/%s.chunked.map", h->repo_dir, etag);
		t->lock = xasprintf("%s/%s.lock", h->lock_dir, etag);
	}
	if (!t->blob || !t->part || !t->cpart || !t->lock || !t->chunks) {
		target_free(t);
		return lq_fail(err, LQ_ERR_NOMEM, "out of memory");
	}
	return LQ_OK;
}

/* local_dir metadata: "<commit>\n<etag>\n<timestamp>\n" (section 4.12). */
static char *local_meta_path(struct hub *h, const char *path)
{
	return xasprintf("%s/.cache/huggingface/download/%s.metadata", h->local, path);
}

static int local_up_to_date(struct hub *h, const char *path, const char *etag)
{
	char *mp = local_meta_path(h, path), *fp = xasprintf("%s/%s", h->local, path);
	char *txt = mp ? read_small(mp) : NULL;
	int ok = 0;
	struct stat st;
	if (txt && fp && stat(fp, &st) == 0 && S_ISREG(st.st_mode)) {
		char *l1 = strchr(txt, '\n');
		char *l2 = l1 ? strchr(l1 + 1, '\n') : NULL;
		if (l1 && l2) {
			*l2 = 0;
			double ts = atof(l2 + 1);
			if (!strcmp(l1 + 1, etag) && (double)st.st_mtime - 1 <= ts)
				ok = 1;
		}
	}
	free(txt);
	free(mp);
	free(fp);
	return ok;
}

static int local_finish(struct hub *h, const char *path, const struct meta *m,
			struct lq_error *err)
{
	char *mp = local_meta_path(h, path);
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	char *txt = xasprintf("%s\n%s\n%.6f\n", m->commit, m->etag,
			      (double)ts.tv_sec + ts.tv_nsec / 1e9);
	int rc = LQ_OK;
	if (!mp || !txt) {
		rc = lq_fail(err, LQ_ERR_NOMEM, "out of memory");
	} else {
		int e = mkdir_parent(mp);
		if (!e)
			e = write_atomic(mp, txt, strlen(txt));
		if (e)
			rc = lq_fail_errno(err, e, "%s", mp);
	}
	free(mp);
	free(txt);
	return rc;
}

static void local_dir_setup(struct hub *h)
{
	char *d = xasprintf("%s/.cache/huggingface", h->local);
	if (!d || mkdir_p(d)) {
		free(d);
		return;
	}
	char *g = xasprintf("%s/.gitignore", d);
	if (g && access(g, F_OK) != 0)
		write_atomic(g, "*", 1);
	free(g);
	free(d);
}

/*
 * Fetch one file whose metadata m is known: reuse the blob or download it,
 * then link the pointer (cache mode) or finish the local file.
 */
static int fetch_with_meta(struct hub *h, CURL *c, struct fjob *fj, const struct meta *m,
			   struct lq_error *err)
{
	struct target t;
	int rc = target_init(h, fj->path, m->etag, &t, err);
	if (rc)
		return rc;
	char *pointer = h->local ? NULL
				 : xasprintf("%s/snapshots/%s/%s", h->repo_dir, m->commit, fj->path);
	if (!h->local && !pointer) {
		target_free(&t);
		return lq_fail(err, LQ_ERR_NOMEM, "out of memory");
	}
	fj->size = m->size;
	int lfd = -1;
	if (!h->o->force && !h->local && file_exists(t.blob)) {
		/* reuse (e.g. a blob Python downloaded) */
		rc = lock_take(h, t.lock, &lfd, err);
		if (!rc)
			rc = link_pointer(h, t.blob, m->etag, pointer, fj->path, err);
		lock_release(t.lock, lfd);
		if (!rc)
			add_done(h, fj, (int64_t)m->size);
		goto out;
	}
	if ((rc = lock_take(h, t.lock, &lfd, err)))
		goto out;
	if (h->local && !h->o->force && file_exists(t.blob)) {
		/* a file already there (no metadata): keep it if its hash matches */
		char hex[65];
		uint64_t sz = 0;
		if (!lq_hub_hash_file(t.blob, etag_git(m->etag), hex, &sz, NULL) &&
		    sz == m->size && !strcmp(hex, m->etag)) {
			add_done(h, fj, (int64_t)m->size);
			rc = local_finish(h, fj->path, m, err);
			lock_release(t.lock, lfd);
			goto out;
		}
	}
	if (h->o->force || h->local || !file_exists(t.blob)) {
		if (h->o->force && !h->local) {
			/* never overwrite a verified blob in place: download next to it */
			unlink(t.part);
			unlink(t.cpart);
			unlink(t.chunks);
		}
		rc = download(h, c, fj, m, &t, err);
		/* a signed CDN URL may expire (403) during a long download:
		 * resolve again for a fresh one and resume from the partial */
		struct meta fresh = {0};
		for (int refresh = 0; rc == LQ_ERR_AUTH && refresh < 2 && m->location &&
				      !same_origin(h, m->location);
		     refresh++) {
			free(fresh.location);
			fresh.location = NULL;
			if (resolve_meta(h, c, m->commit, fj->path, &fresh, NULL) ||
			    strcmp(fresh.etag, m->etag) || fresh.size != m->size)
				break;
			hlog(h, "%s: download URL refused (%s); retrying with a fresh one", fj->path,
			     err ? err->msg : "403");
			memcpy(fresh.commit, m->commit, sizeof fresh.commit);
			rc = download(h, c, fj, &fresh, &t, err);
		}
		free(fresh.location);
	} else {
		add_done(h, fj, (int64_t)m->size);
	}
	if (!rc && !h->local)
		rc = link_pointer(h, t.blob, m->etag, pointer, fj->path, err);
	if (!rc && h->local)
		rc = local_finish(h, fj->path, m, err);
	lock_release(t.lock, lfd);
out:
	free(pointer);
	target_free(&t);
	return rc;
}

/* ------------------------------------------------------------ setup */

static int hub_init(struct hub *h, const struct lq_hub_options *o, const char *repo_id,
		    struct lq_error *err)
{
	memset(h, 0, sizeof *h);
	h->o = o;
	pthread_mutex_init(&h->mu, NULL);
	atomic_init(&h->done, 0);
	atomic_init(&h->cancel, 0);
	int rc = lq_hub_check_repo_id(repo_id, err);
	if (rc)
		return rc;
	h->repo_id = repo_id;
	h->type = o->repo_type ? o->repo_type : "model";
	if (!strcmp(h->type, "model"))
		h->prefix = "";
	else if (!strcmp(h->type, "dataset"))
		h->prefix = "datasets/";
	else if (!strcmp(h->type, "space"))
		h->prefix = "spaces/";
	else
		return lq_fail(err, LQ_ERR_INVALID, "invalid repo type '%s' (model, dataset, space)",
			       h->type);
	h->rev = o->revision && *o->revision ? o->revision : "main";
	if (strlen(h->rev) > 255 || lq_hub_check_filename(h->rev, NULL))
		return lq_fail(err, LQ_ERR_INVALID, "invalid revision '%s'", h->rev);
	for (const char *t = o->token; t && *t; t++)
		if ((unsigned char)*t < 0x20 || *t == 0x7f)
			return lq_fail(err, LQ_ERR_INVALID, "invalid token: control character");
	const char *ep = o->endpoint && *o->endpoint ? o->endpoint : "https://huggingface.co";
	h->endpoint = strdup(ep);
	if (!h->endpoint)
		return lq_fail(err, LQ_ERR_NOMEM, "out of memory");
	size_t n = strlen(h->endpoint);
	while (n && h->endpoint[n - 1] == '/')
		h->endpoint[--n] = 0;
	if (url_origin(h->endpoint, h->origin, sizeof h->origin))
		return lq_fail(err, LQ_ERR_INVALID, "invalid endpoint URL '%s'", ep);
	h->jobs = o->jobs > 0 ? o->jobs : 8;
	if (h->jobs > 64)
		h->jobs = 64;
	h->conns = o->connections > 0 ? o->connections : 8;
	if (h->conns > 64)
		h->conns = 64;
	h->retries = o->max_retries < 0 ? 0 : o->max_retries ? o->max_retries : 5;
	h->delay = o->retry_delay > 0 ? o->retry_delay : 1;
	h->timeout = o->timeout > 0 ? o->timeout : 10;
	h->chunk = o->chunk_size ? o->chunk_size : 16u << 20;
	if (h->chunk < 64u << 10)
		h->chunk = 64u << 10;
	h->chunk_min = o->chunk_min ? o->chunk_min : 64u << 20;
	snprintf(h->ua, sizeof h->ua, "%s",
		 o->user_agent ? o->user_agent : "hf-fetch/" LQ_VERSION_STRING);
	if (o->local_dir && *o->local_dir) {
		int e = mkdir_p(o->local_dir);
		h->local = e ? NULL : realpath(o->local_dir, NULL);
		if (!h->local)
			return lq_fail_errno(err, e ? e : errno, "%s", o->local_dir);
		local_dir_setup(h);
		return LQ_OK;
	}
	if (!o->cache_dir || !*o->cache_dir)
		return lq_fail(err, LQ_ERR_INVALID, "no cache directory given");
	if (!o->offline) {
		int e = mkdir_p(o->cache_dir);
		if (e)
			return lq_fail_errno(err, e, "%s", o->cache_dir);
	}
	h->cache = realpath(o->cache_dir, NULL);
	if (!h->cache) {
		if (o->offline)
			return lq_fail(err, LQ_ERR_NOTFOUND,
				       "offline mode and the cache %s does not exist", o->cache_dir);
		return lq_fail_errno(err, errno, "%s", o->cache_dir);
	}
	char folder[512];
	if (lq_hub_repo_folder(folder, sizeof folder, h->type, repo_id))
		return lq_fail(err, LQ_ERR_INVALID, "invalid repo id '%s'", repo_id);
	h->repo_dir = xasprintf("%s/%s", h->cache, folder);
	h->lock_dir = xasprintf("%s/.locks/%s", h->cache, folder);
	if (!h->repo_dir || !h->lock_dir)
		return lq_fail(err, LQ_ERR_NOMEM, "out of memory");
	return LQ_OK;
}

static void hub_release(struct hub *h)
{
	free(h->endpoint);
	free(h->cache);
	free(h->repo_dir);
	free(h->lock_dir);
	free(h->local);
	pthread_mutex_destroy(&h->mu);
}

/* Commit of h->rev from the cache: the revision itself or refs/<rev>. */
static int cached_commit(struct hub *h, char commit[41])
{
	if (is_hex(h->rev, 40)) {
		memcpy(commit, h->rev, 41);
		return 1;
	}
	if (!h->repo_dir)
		return 0;
	char *ref = xasprintf("%s/refs/%s", h->repo_dir, h->rev);
	char *txt = ref ? read_small(ref) : NULL;
	free(ref);
	if (!txt)
		return 0;
	strip(txt);
	int ok = is_hex(txt, 40);
	if (ok)
		memcpy(commit, txt, 41);
	free(txt);
	return ok;
}

static int set_out(char **out, char *s, struct lq_error *err)
{
	if (!s)
		return lq_fail(err, LQ_ERR_NOMEM, "out of memory");
	*out = s;
	return LQ_OK;
}

/* Offline lookup of one file, as try_to_load_from_cache. */
static int file_from_cache(struct hub *h, const char *filename, char **out, const char *why,
			   struct lq_error *err)
{
	if (h->local) {
		char *p = xasprintf("%s/%s", h->local, filename);
		if (p && file_exists(p))
			return set_out(out, p, err);
		free(p);
		return lq_fail(err, LQ_ERR_NOTFOUND, "%s and '%s' is not in %s", why, filename,
			       h->local);
	}
	char commit[41];
	if (!cached_commit(h, commit))
		return lq_fail(err, LQ_ERR_NOTFOUND, "%s and %s '%s' (revision '%s') is not in the cache %s",
			       why, h->type, h->repo_id, h->rev, h->cache);
	char *ne = xasprintf("%s/.no_exist/%s/%s", h->repo_dir, commit, filename);
	int missing = ne && file_exists(ne);
	free(ne);
	if (missing)
		return lq_fail(err, LQ_ERR_NOTFOUND,
			       "file '%s' does not exist in %s '%s' at revision '%s' (cached)",
			       filename, h->type, h->repo_id, h->rev);
	char *p = xasprintf("%s/snapshots/%s/%s", h->repo_dir, commit, filename);
	if (p && file_exists(p))
		return set_out(out, p, err);
	free(p);
	return lq_fail(err, LQ_ERR_NOTFOUND, "%s and '%s' of %s '%s' (revision '%s') is not in the cache",
		       why, filename, h->type, h->repo_id, h->rev);
}

static int snapshot_from_cache(struct hub *h, char **out, const char *why, struct lq_error *err)
{
	if (h->local) {
		struct stat st;
		if (stat(h->local, &st) == 0 && S_ISDIR(st.st_mode))
			return set_out(out, strdup(h->local), err);
		return lq_fail(err, LQ_ERR_NOTFOUND, "%s and %s does not exist", why, h->local);
	}
	char commit[41];
	if (cached_commit(h, commit)) {
		char *p = xasprintf("%s/snapshots/%s", h->repo_dir, commit);
		struct stat st;
		if (p && stat(p, &st) == 0 && S_ISDIR(st.st_mode))
			return set_out(out, p, err);
		free(p);
	}
	return lq_fail(err, LQ_ERR_NOTFOUND, "%s and %s '%s' (revision '%s') is not in the cache %s",
		       why, h->type, h->repo_id, h->rev, h->cache);
}

/* ------------------------------------------------------------ public */

int lq_hub_fetch_file(const struct lq_hub_options *o, const char *repo_id, const char *filename,
		      char **path_out, struct lq_error *err)
{
	if (!o || !path_out)
		return lq_fail(err, LQ_ERR_INVALID, "no options");
	*path_out = NULL;
	struct hub h;
	int rc = hub_init(&h, o, repo_id, err);
	if (!rc)
		rc = lq_hub_check_filename(filename, err);
	if (rc) {
		hub_release(&h);
		return rc;
	}
	/* a commit revision whose file is cached needs no request */
	if (!o->force && !h.local && is_hex(h.rev, 40)) {
		char *p = xasprintf("%s/snapshots/%s/%s", h.repo_dir, h.rev, filename);
		if (p && file_exists(p)) {
			hub_release(&h);
			*path_out = p;
			return LQ_OK;
		}
		free(p);
	}
	if (o->offline) {
		rc = file_from_cache(&h, filename, path_out, "offline mode", err);
		hub_release(&h);
		return rc;
	}
	if (curl_global_init(CURL_GLOBAL_DEFAULT)) {
		hub_release(&h);
		return lq_fail(err, LQ_ERR_NETWORK, "cannot initialise libcurl");
	}
	share_init(&h);
	CURL *c = handle_new(&h);
	struct fjob fj = {.path = (char *)filename};
	atomic_init(&fj.done, 0);
	struct meta m = {0};
	if (!c) {
		rc = lq_fail(err, LQ_ERR_NOMEM, "cannot create a curl handle");
		goto out;
	}
	/* cached already: one quick try, then fall back to the cache (as Python) */
	char *cached = NULL;
	int saved_retries = h.retries;
	if (!o->force && !file_from_cache(&h, filename, &cached, "", NULL))
		h.retries = 0;
	free(cached);
	rc = resolve_meta(&h, c, h.rev, filename, &m, err);
	h.retries = saved_retries;
	if (rc == LQ_ERR_NOTFOUND && m.commit[0] && err && strstr(err->msg, "not found in")) {
		/* EntryNotFound: remember it as huggingface_hub does */
		if (!h.local && !strncmp(err->msg, "file ", 5)) {
			mark_no_exist(&h, m.commit, filename);
			char *sd = xasprintf("%s/snapshots/%s", h.repo_dir, m.commit);
			struct stat st;
			if (sd && stat(sd, &st) == 0)
				write_ref(&h, m.commit, NULL);
			free(sd);
		}
		goto out;
	}
	if (rc == LQ_ERR_NETWORK) {
		/* cannot reach the hub: fall back to the cache */
		char *p = NULL;
		struct lq_error e2 = {0};
		if (!file_from_cache(&h, filename, &p, "hub unreachable", &e2)) {
			hlog(&h, "warning: %s; using the cached file", err ? err->msg : "hub unreachable");
			*path_out = p;
			rc = LQ_OK;
		}
		goto out;
	}
	if (rc)
		goto out;
	h.files_total = 1;
	h.total = m.size;
	if (!h.local) {
		cachedir_tag(&h);
		char *pointer = xasprintf("%s/snapshots/%s/%s", h.repo_dir, m.commit, filename);
		if (!pointer) {
			rc = lq_fail(err, LQ_ERR_NOMEM, "out of memory");
			goto out;
		}
		if (!o->force && file_exists(pointer)) {
			rc = write_ref(&h, m.commit, err);
			add_done(&h, &fj, (int64_t)m.size);
		} else {
			rc = fetch_with_meta(&h, c, &fj, &m, err);
			if (!rc)
				rc = write_ref(&h, m.commit, err);
		}
		if (!rc)
			*path_out = pointer;
		else
			free(pointer);
	} else {
		if (o->force || !local_up_to_date(&h, filename, m.etag))
			rc = fetch_with_meta(&h, c, &fj, &m, err);
		else
			add_done(&h, &fj, (int64_t)m.size);
		if (!rc)
			rc = set_out(path_out, xasprintf("%s/%s", h.local, filename), err);
	}
	if (!rc) {
		h.files_done = 1;
		report(&h, &fj, 2);
	}
out:
	free(m.location);
	curl_easy_cleanup(c);
	share_release(&h);
	curl_global_cleanup();
	hub_release(&h);
	return rc;
}

struct pool {
	struct hub *h;
	struct filelist *files;
	const char *commit;
	size_t next;
	pthread_mutex_t mu;
};

static void run_one(struct hub *h, CURL *c, struct fjob *fj, const char *commit)
{
	if (atomic_load(&h->cancel)) {
		fj->rc = lq_fail(&fj->err, LQ_ERR_INTERRUPTED, "cancelled");
		return;
	}
	/* already linked? */
	if (!h->o->force && !h->local) {
		char *p = xasprintf("%s/snapshots/%s/%s", h->repo_dir, commit, fj->path);
		int ok = p && file_exists(p);
		free(p);
		if (ok) {
			add_done(h, fj, (int64_t)fj->size);
			return;
		}
	}
	if (!h->o->force && h->local && fj->have_meta && local_up_to_date(h, fj->path, fj->etag)) {
		add_done(h, fj, (int64_t)fj->size);
		return;
	}
	/* blob known from the listing (e.g. downloaded by Python): link, no request */
	if (!h->o->force && !h->local && fj->have_meta) {
		struct meta m = {.size = fj->size};
		memcpy(m.commit, commit, 41);
		memcpy(m.etag, fj->etag, sizeof m.etag);
		char *blob = xasprintf("%s/blobs/%s", h->repo_dir, fj->etag);
		int ok = blob && file_exists(blob);
		free(blob);
		if (ok) {
			fj->rc = fetch_with_meta(h, c, fj, &m, &fj->err);
			return;
		}
	}
	struct meta m;
	fj->rc = resolve_meta(h, c, commit, fj->path, &m, &fj->err);
	if (fj->rc) {
		fj->gone = fj->rc == LQ_ERR_NOTFOUND && m.gone;
		return;
	}
	if (fj->have_meta && strcmp(m.etag, fj->etag))
		hlog(h, "warning: %s: the listing says etag %s, the file has %s", fj->path, fj->etag,
		     m.etag);
	if (fj->have_meta && fj->size != m.size) {
		/* the listing's size counted in the total: correct it */
		pthread_mutex_lock(&h->mu);
		h->total = h->total - fj->size + m.size;
		pthread_mutex_unlock(&h->mu);
	}
	memcpy(m.commit, commit, 41);
	fj->rc = fetch_with_meta(h, c, fj, &m, &fj->err);
	free(m.location);
}

static void *pool_worker(void *arg)
{
	struct pool *p = arg;
	struct hub *h = p->h;
	CURL *c = handle_new(h);
	for (;;) {
		pthread_mutex_lock(&p->mu);
		size_t i = p->next < p->files->n ? p->next++ : p->files->n;
		pthread_mutex_unlock(&p->mu);
		if (i >= p->files->n)
			break;
		struct fjob *fj = &p->files->v[i];
		if (!c)
			fj->rc = lq_fail(&fj->err, LQ_ERR_NOMEM, "cannot create a curl handle");
		else
			run_one(h, c, fj, p->commit);
		pthread_mutex_lock(&h->mu);
		if (!fj->rc)
			h->files_done++;
		pthread_mutex_unlock(&h->mu);
		report(h, fj, 1);
	}
	curl_easy_cleanup(c);
	return NULL;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *f)
{
	(void)st;
	(void)f;
	if (flag == FTW_DP)
		rmdir(path);
	else
		unlink(path);
	return 0;
}

/* Remove a snapshot folder this call created for a commit it gave up: its
 * pointers and folders (the blobs they point to stay). */
static void remove_snapshot(const char *snap)
{
	nftw(snap, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/*
 * The current commit of the branch or tag h->rev, asked again after a
 * listed file turned out to be gone: X-Repo-Commit of HEAD
 * /resolve/<rev>/<path> (also sent with a 404 EntryNotFound), else
 * /api/.../revision/<rev>.  1 with now[] set, or 0.
 */
static int resolve_again(struct hub *h, CURL *c, const char *path, char now[41])
{
	if (path) {
		struct meta m;
		resolve_meta(h, c, h->rev, path, &m, NULL);
		free(m.location);
		if (is_hex(m.commit, 40)) {
			memcpy(now, m.commit, 41);
			return 1;
		}
	}
	return get_commit(h, c, now, NULL) == LQ_OK;
}

/*
 * Download the files of commit listed in *all that pass the filters into
 * snapshots/<commit> (or the local dir).  *snap receives the snapshot
 * folder (malloc'ed), *made whether this call created it.  The result of
 * each file is in all->v[i].rc; returns the first failure.
 */
static int snapshot_commit(struct hub *h, const char *commit, struct filelist *all, char **snap,
			   int *made, struct lq_error *err)
{
	const struct lq_hub_options *o = h->o;
	size_t k = 0;
	for (size_t i = 0; i < all->n; i++) {
		if (lq_hub_path_selected(all->v[i].path, o->include, o->n_include, o->exclude,
					 o->n_exclude)) {
			all->v[k++] = all->v[i];
		} else {
			free(all->v[i].path);
		}
	}
	all->n = k;
	if (!all->n && (o->n_include || o->n_exclude))
		hlog(h, "warning: no file of %s '%s' matches the patterns", h->type, h->repo_id);
	h->total = 0;
	h->files_done = 0;
	atomic_store(&h->done, 0);
	for (size_t i = 0; i < all->n; i++) {
		h->total += all->v[i].size;
		atomic_init(&all->v[i].done, 0);
	}
	h->files_total = (int)all->n;
	if (!h->local) {
		cachedir_tag(h);
		*snap = xasprintf("%s/snapshots/%s", h->repo_dir, commit);
		struct stat st;
		*made = *snap && stat(*snap, &st) != 0;
		int e = *snap ? mkdir_p(*snap) : ENOMEM;
		if (e) {
			*made = 0;
			return lq_fail_errno(err, e, "%s", *snap ? *snap : "snapshot");
		}
	}
	report(h, NULL, 1);
	struct pool p = {.h = h, .files = all, .commit = commit};
	pthread_mutex_init(&p.mu, NULL);
	int nt = h->jobs;
	if ((size_t)nt > all->n)
		nt = (int)all->n;
	pthread_t tid[64];
	int started = 0;
	for (int i = 0; i < nt; i++)
		if (pthread_create(&tid[i], NULL, pool_worker, &p) == 0)
			started++;
	if (nt && !started)
		pool_worker(&p);
	for (int i = 0; i < started; i++)
		pthread_join(tid[i], NULL);
	pthread_mutex_destroy(&p.mu);
	int failed = 0, rc = LQ_OK;
	for (size_t i = 0; i < all->n; i++) {
		if (!all->v[i].rc)
			continue;
		if (!failed++) {
			rc = all->v[i].rc;
			if (err)
				*err = all->v[i].err;
		} else if (all->v[i].rc != LQ_ERR_INTERRUPTED && !all->v[i].gone) {
			hlog(h, "%s", all->v[i].err.msg);
		}
	}
	if (failed > 1 && err) {
		size_t l = strlen(err->msg);
		snprintf(err->msg + l, sizeof err->msg - l, " (and %d more failed files)", failed - 1);
	}
	return rc;
}

int lq_hub_fetch_snapshot(const struct lq_hub_options *o, const char *repo_id, char **path_out,
			  struct lq_error *err)
{
	if (!o || !path_out)
		return lq_fail(err, LQ_ERR_INVALID, "no options");
	*path_out = NULL;
	struct hub h;
	int rc = hub_init(&h, o, repo_id, err);
	if (rc) {
		hub_release(&h);
		return rc;
	}
	if (o->offline) {
		rc = snapshot_from_cache(&h, path_out, "offline mode", err);
		hub_release(&h);
		return rc;
	}
	if (curl_global_init(CURL_GLOBAL_DEFAULT)) {
		hub_release(&h);
		return lq_fail(err, LQ_ERR_NETWORK, "cannot initialise libcurl");
	}
	share_init(&h);
	struct filelist all = {0};
	char commit[41], first[41] = "";
	char *snap = NULL, *gone = NULL;
	int branch = !is_hex(h.rev, 40), rev_gone = 0, made = 0;
	CURL *c = handle_new(&h);
	if (!c) {
		rc = lq_fail(err, LQ_ERR_NOMEM, "cannot create a curl handle");
		goto out;
	}
	/* cached already: one quick try, then fall back to the cache (as Python) */
	char *cached = NULL;
	int saved_retries = h.retries;
	if (!o->force && !snapshot_from_cache(&h, &cached, "", NULL))
		h.retries = 0;
	free(cached);
	if (branch)
		rc = get_commit(&h, c, commit, err);
	else
		memcpy(commit, h.rev, 41);
	if (!rc)
		rc = list_tree(&h, c, commit, &all, &rev_gone, err);
	h.retries = saved_retries;
	if (rc == LQ_ERR_NETWORK) {
		struct lq_error e2 = {0};
		if (!snapshot_from_cache(&h, path_out, "hub unreachable", &e2)) {
			hlog(&h, "warning: %s; using the cached snapshot", err ? err->msg : "");
			rc = LQ_OK;
		}
		goto out;
	}
	for (;;) {
		if (!rc)
			rc = snapshot_commit(&h, commit, &all, &snap, &made, err);
		/*
		 * A file listed for the commit (or the commit itself) is gone:
		 * the branch was force-pushed and /revision answered an old
		 * commit (hub-protocol.md section 7, #12).  Ask for the branch's
		 * commit again and start over on it, once; never leave a half
		 * snapshot of a commit given up, nor a ref to it.
		 */
		int stale = branch && rc == LQ_ERR_NOTFOUND && rev_gone;
		free(gone);
		gone = NULL;
		for (size_t i = 0; branch && rc && !stale && i < all.n; i++)
			if (all.v[i].rc && all.v[i].gone) {
				stale = 1;
				free(gone);
				gone = strdup(all.v[i].path);
			}
		if (!stale)
			break;
		if (made)
			remove_snapshot(snap);
		made = 0;
		free(snap);
		snap = NULL;
		char now[41] = "";
		int found = resolve_again(&h, c, gone, now);
		char what[320];
		if (gone)
			snprintf(what, sizeof what, "file '%s'", gone);
		else
			snprintf(what, sizeof what, "the file list");
		if (!first[0] && found && strcmp(now, commit)) {
			hlog(&h, "note: %s '%s': revision '%s' moved from %s to %s (force-pushed?); "
				 "downloading the new commit",
			     h.type, repo_id, h.rev, commit, now);
			memcpy(first, commit, sizeof first);
			memcpy(commit, now, sizeof commit);
			filelist_free(&all);
			rc = list_tree(&h, c, commit, &all, &rev_gone, err);
			continue;
		}
		if (first[0])
			rc = lq_fail(err, LQ_ERR_NOTFOUND,
				     "%s '%s': %s not found at commit %s either (revision '%s' "
				     "resolved to %s, then to %s: force-pushed again? try later)",
				     h.type, repo_id, what, commit, h.rev, first, commit);
		else if (found)
			rc = lq_fail(err, LQ_ERR_NOTFOUND,
				     "%s '%s': %s of commit %s is gone (404) and revision '%s' still "
				     "resolves to %s (force-pushed, and the hub's answer is stale? "
				     "try later)",
				     h.type, repo_id, what, commit, h.rev, now);
		else
			rc = lq_fail(err, LQ_ERR_NOTFOUND,
				     "%s '%s': %s of commit %s is gone (404) and revision '%s' cannot "
				     "be resolved again",
				     h.type, repo_id, what, commit, h.rev);
		goto out;
	}
	/* the ref names the commit whose snapshot was made (also after a
	 * partial failure, as huggingface_hub, which writes it first) */
	if (snap) {
		int e = write_ref(&h, commit, rc ? NULL : err);
		if (!rc)
			rc = e;
	}
	if (!rc) {
		report(&h, NULL, 2);
		if (h.local) {
			rc = set_out(path_out, strdup(h.local), err);
		} else {
			*path_out = snap;
			snap = NULL;
		}
	}
out:
	free(snap);
	free(gone);
	filelist_free(&all);
	curl_easy_cleanup(c);
	share_release(&h);
	curl_global_cleanup();
	hub_release(&h);
	return rc;
}
