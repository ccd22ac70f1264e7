/*
 * hf-fetch - download a Hugging Face Hub repo (or one file of it) into the
 * standard HF cache and print the path.  See man/hf-fetch.1.
 *
 * This file resolves the environment (HF_ENDPOINT, HF_HOME, HF_HUB_CACHE,
 * the token, HF_HUB_OFFLINE, ...), draws the progress bar and maps errors to
 * exit codes; everything else is lq_hub_fetch_file/_snapshot in libquant.
 */
#include "libquant.h"

#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static const char *argv0 = "hf-fetch";

static void warnx_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void warnx_(const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "%s: ", argv0);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static void usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void usage_error(const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "%s: ", argv0);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nTry '%s --help' for more information.\n", argv0);
	exit(2);
}

static const char usage_text[] =
	"usage: hf-fetch [OPTIONS] REPO_ID [FILE...]\n"
	"\n"
	"Download a Hugging Face Hub repo (or the named files) into the HF cache,\n"
	"verified and resumable, and print the snapshot directory (or, for one FILE,\n"
	"the file's path) on stdout.  REPO_ID is 'name', 'org/name', or\n"
	"'datasets/org/name' / 'spaces/org/name', or hf://[TYPE/]ID[@REV][/PATH].\n"
	"Several FILEs (or 'dir/') act as --include patterns.\n"
	"\n"
	"  -r, --revision REV      branch, tag or commit (default: main)\n"
	"      --repo-type TYPE    model (default), dataset or space (also --type)\n"
	"  -i, --include PATTERN   only files matching PATTERN (repeatable; fnmatch,\n"
	"                          '*' also matches '/')\n"
	"  -x, --exclude PATTERN   skip files matching PATTERN (repeatable)\n"
	"      --cache-dir DIR     cache root (default: $HF_HUB_CACHE or $HF_HOME/hub)\n"
	"      --local-dir DIR     write real files under DIR instead of the cache\n"
	"      --token TOKEN       access token (default: $HF_TOKEN or the stored token)\n"
	"      --endpoint URL      hub URL (default: $HF_ENDPOINT or https://huggingface.co)\n"
	"  -j, --jobs N            files downloaded in parallel (default 8)\n"
	"  -c, --connections N     ranged connections per large file (default 8, 1 = off)\n"
	"      --chunk-size SIZE   bytes per ranged chunk, K/M/G suffixes (default 16M)\n"
	"      --chunk-min SIZE    files from this size on are chunked (default 64M)\n"
	"      --offline           use the cache only (also HF_HUB_OFFLINE=1)\n"
	"  -f, --force             download again even if cached\n"
	"      --timeout SECONDS   connect timeout and stall limit (default 10)\n"
	"      --retries N         retries per request on errors, 429 and 5xx (default 5)\n"
	"      --retry-delay SEC   first backoff delay, doubled each retry (default 1)\n"
	"      --lock-timeout SEC  give up waiting for a cache lock (default: wait)\n"
	"  -q, --quiet             no progress and no warnings; errors only\n"
	"  -v, --verbose           log every HTTP request\n"
	"  -h, --help              show this help\n"
	"  -V, --version           show the version\n"
	"\n"
	"Exit status: 0 success, 1 failure, 2 usage error.\n";

static int env_true(const char *name)
{
	const char *v = getenv(name);
	return v && (!strcasecmp(v, "1") || !strcasecmp(v, "on") || !strcasecmp(v, "yes") ||
		     !strcasecmp(v, "true"));
}

static int env_false(const char *name)
{
	const char *v = getenv(name);
	return v && *v && (!strcasecmp(v, "0") || !strcasecmp(v, "off") || !strcasecmp(v, "no") ||
			   !strcasecmp(v, "false"));
}

static const char *env(const char *name)
{
	const char *v = getenv(name);
	return v && *v ? v : NULL;
}

/* malloc'ed path; expands a leading ~ */
static char *expand(const char *p)
{
	const char *home = env("HOME");
	char *r = NULL;
	if (p[0] == '~' && (p[1] == '/' || !p[1]) && home) {
		if (asprintf(&r, "%s%s", home, p + 1) < 0)
			r = NULL;
	} else {
		r = strdup(p);
	}
	if (!r) {
		warnx_("out of memory");
		exit(1);
	}
	return r;
}

static char *hf_home(void)
{
	if (env("HF_HOME"))
		return expand(env("HF_HOME"));
	char *r = NULL;
	if (env("XDG_CACHE_HOME")) {
		char *x = expand(env("XDG_CACHE_HOME"));
		if (asprintf(&r, "%s/huggingface", x) < 0)
			r = NULL;
		free(x);
	} else {
		r = expand("~/.cache/huggingface");
	}
	if (!r) {
		warnx_("out of memory");
		exit(1);
	}
	return r;
}

/* Clean a token as huggingface_hub: drop CR/LF, strip blanks. malloc'ed or NULL. */
static char *clean_token(const char *t)
{
	if (!t)
		return NULL;
	size_t n = strlen(t);
	char *r = malloc(n + 1);
	if (!r)
		return NULL;
	size_t o = 0;
	for (size_t i = 0; i < n; i++)
		if (t[i] != '\r' && t[i] != '\n')
			r[o++] = t[i];
	r[o] = 0;
	size_t s = 0;
	while (r[s] == ' ' || r[s] == '\t')
		s++;
	while (o > s && (r[o - 1] == ' ' || r[o - 1] == '\t'))
		r[--o] = 0;
	memmove(r, r + s, o - s + 1);
	if (!*r) {
		free(r);
		return NULL;
	}
	return r;
}

static char *read_token_file(const char *path)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return NULL;
	char buf[8192];
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = 0;
	return clean_token(buf);
}

static int parse_size(const char *s, uint64_t *out)
{
	char *e;
	errno = 0;
	double v = strtod(s, &e);
	if (errno || e == s || v <= 0)
		return -1;
	double m = 1;
	switch (*e) {
	case 'k': case 'K': m = 1024; e++; break;
	case 'm': case 'M': m = 1024.0 * 1024; e++; break;
	case 'g': case 'G': m = 1024.0 * 1024 * 1024; e++; break;
	default: break;
	}
	if (*e == 'i' || *e == 'B')
		e++;
	if (*e == 'B')
		e++;
	if (*e || v * m > 1e18)
		return -1;
	*out = (uint64_t)(v * m);
	return *out ? 0 : -1;
}

static int parse_int(const char *s, int lo, int hi, int *out)
{
	char *e;
	errno = 0;
	long v = strtol(s, &e, 10);
	if (errno || e == s || *e || v < lo || v > hi)
		return -1;
	*out = (int)v;
	return 0;
}

static int parse_secs(const char *s, double *out)
{
	char *e;
	errno = 0;
	double v = strtod(s, &e);
	if (errno || e == s || *e || v < 0 || v > 1e6)
		return -1;
	*out = v;
	return 0;
}

/* ---------------------------------------------------------- progress */

struct ui {
	int bar;      /* draw a progress bar on stderr */
	int quiet;
	int drawn;    /* a bar line is on screen */
	double t0;
	double rate;  /* smoothed bytes/s */
	double last_t;
	uint64_t last_done;
};

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void human(char *buf, size_t n, double v)
{
	static const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
	int i = 0;
	while (v >= 1024 && i < 4) {
		v /= 1024;
		i++;
	}
	snprintf(buf, n, i ? "%.1f %s" : "%.0f %s", v, u[i]);
}

static void clear_bar(struct ui *u)
{
	if (u->drawn) {
		fputs("\r\033[K", stderr);
		u->drawn = 0;
	}
}

static int on_progress(void *ctx, const struct lq_hub_progress *p)
{
	struct ui *u = ctx;
	if (!u->bar)
		return 0;
	double t = now_s();
	if (t - u->last_t >= 0.5 || p->finished) {
		double inst = (double)(p->done - u->last_done) / (t - u->last_t);
		if (p->done < u->last_done)
			inst = 0;
		u->rate = u->rate == 0 ? inst : 0.7 * u->rate + 0.3 * inst;
		u->last_t = t;
		u->last_done = p->done;
	}
	char d[32], tot[32], r[32], eta[32] = "--:--";
	human(d, sizeof d, (double)p->done);
	human(tot, sizeof tot, (double)p->total);
	human(r, sizeof r, u->rate);
	if (u->rate > 1 && p->total > p->done) {
		long s = (long)((double)(p->total - p->done) / u->rate);
		snprintf(eta, sizeof eta, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
	}
	int pct = p->total ? (int)(100.0 * (double)p->done / (double)p->total) : 100;
	char file[48] = "";
	if (p->file && p->file_total) {
		const char *f = p->file;
		size_t l = strlen(f);
		if (l > 28)
			f += l - 28;
		snprintf(file, sizeof file, "  %s %d%%", f,
			 (int)(100.0 * (double)p->file_done / (double)p->file_total));
	}
	fprintf(stderr, "\r\033[K[%d/%d] %s / %s %3d%% %s/s ETA %s%s", p->files_done,
		p->files_total, d, tot, pct, r, eta, file);
	u->drawn = 1;
	if (p->finished)
		clear_bar(u);
	fflush(stderr);
	return 0;
}

static void on_log(void *ctx, const char *msg)
{
	struct ui *u = ctx;
	if (u->quiet)
		return;
	clear_bar(u);
	warnx_("%s", msg);
}

/* ---------------------------------------------------------- main */

enum {
	OPT_REPO_TYPE = 256, OPT_CACHE_DIR, OPT_LOCAL_DIR, OPT_TOKEN, OPT_ENDPOINT, OPT_OFFLINE,
	OPT_TIMEOUT, OPT_RETRIES, OPT_RETRY_DELAY, OPT_LOCK_TIMEOUT, OPT_CHUNK_SIZE, OPT_CHUNK_MIN
};

static const struct option longopts[] = {
	{"revision", required_argument, NULL, 'r'},
	{"repo-type", required_argument, NULL, OPT_REPO_TYPE},
	{"type", required_argument, NULL, OPT_REPO_TYPE},
	{"include", required_argument, NULL, 'i'},
	{"exclude", required_argument, NULL, 'x'},
	{"cache-dir", required_argument, NULL, OPT_CACHE_DIR},
	{"local-dir", required_argument, NULL, OPT_LOCAL_DIR},
	{"token", required_argument, NULL, OPT_TOKEN},
	{"endpoint", required_argument, NULL, OPT_ENDPOINT},
	{"jobs", required_argument, NULL, 'j'},
	{"max-workers", required_argument, NULL, 'j'},
	{"connections", required_argument, NULL, 'c'},
	{"chunk-size", required_argument, NULL, OPT_CHUNK_SIZE},
	{"chunk-min", required_argument, NULL, OPT_CHUNK_MIN},
	{"offline", no_argument, NULL, OPT_OFFLINE},
	{"force", no_argument, NULL, 'f'},
	{"force-download", no_argument, NULL, 'f'},
	{"timeout", required_argument, NULL, OPT_TIMEOUT},
	{"retries", required_argument, NULL, OPT_RETRIES},
	{"retry-delay", required_argument, NULL, OPT_RETRY_DELAY},
	{"lock-timeout", required_argument, NULL, OPT_LOCK_TIMEOUT},
	{"quiet", no_argument, NULL, 'q'},
	{"verbose", no_argument, NULL, 'v'},
	{"help", no_argument, NULL, 'h'},
	{"version", no_argument, NULL, 'V'},
	{NULL, 0, NULL, 0},
};

int main(int argc, char **argv)
{
	struct lq_hub_options o = {0};
	const char **inc = calloc((size_t)argc + 1, sizeof *inc);
	const char **exc = calloc((size_t)argc + 1, sizeof *exc);
	size_t ninc = 0, nexc = 0;
	const char *token = NULL, *cache_dir = NULL, *endpoint = NULL;
	int quiet = 0, opt_offline = 0, timeout_set = 0;
	if (!inc || !exc) {
		warnx_("out of memory");
		return 1;
	}
	int ch;
	while ((ch = getopt_long(argc, argv, "r:i:x:j:c:fqvhV", longopts, NULL)) != -1) {
		switch (ch) {
		case 'r': o.revision = optarg; break;
		case OPT_REPO_TYPE:
			if (strcmp(optarg, "model") && strcmp(optarg, "dataset") &&
			    strcmp(optarg, "space"))
				usage_error("invalid repo type '%s' (model, dataset or space)", optarg);
			o.repo_type = optarg;
			break;
		case 'i': inc[ninc++] = optarg; break;
		case 'x': exc[nexc++] = optarg; break;
		case OPT_CACHE_DIR: cache_dir = optarg; break;
		case OPT_LOCAL_DIR: o.local_dir = optarg; break;
		case OPT_TOKEN: token = optarg; break;
		case OPT_ENDPOINT: endpoint = optarg; break;
		case 'j':
			if (parse_int(optarg, 1, 64, &o.jobs))
				usage_error("invalid -j value '%s' (1..64)", optarg);
			break;
		case 'c':
			if (parse_int(optarg, 1, 64, &o.connections))
				usage_error("invalid --connections value '%s' (1..64)", optarg);
			break;
		case OPT_CHUNK_SIZE:
			if (parse_size(optarg, &o.chunk_size))
				usage_error("invalid --chunk-size '%s'", optarg);
			break;
		case OPT_CHUNK_MIN:
			if (parse_size(optarg, &o.chunk_min))
				usage_error("invalid --chunk-min '%s'", optarg);
			break;
		case OPT_OFFLINE: opt_offline = 1; break;
		case 'f': o.force = 1; break;
		case OPT_TIMEOUT:
			if (parse_secs(optarg, &o.timeout) || o.timeout <= 0)
				usage_error("invalid --timeout '%s'", optarg);
			timeout_set = 1;
			break;
		case OPT_RETRIES:
			if (parse_int(optarg, 0, 100, &o.max_retries))
				usage_error("invalid --retries '%s' (0..100)", optarg);
			if (!o.max_retries)
				o.max_retries = -1;
			break;
		case OPT_RETRY_DELAY:
			if (parse_secs(optarg, &o.retry_delay) || o.retry_delay <= 0)
				usage_error("invalid --retry-delay '%s'", optarg);
			break;
		case OPT_LOCK_TIMEOUT:
			if (parse_secs(optarg, &o.lock_timeout))
				usage_error("invalid --lock-timeout '%s'", optarg);
			break;
		case 'q': quiet = 1; break;
		case 'v': o.verbose = 1; break;
		case 'h':
		case 'V':
			free(inc);
			free(exc);
			if (ch == 'h')
				fputs(usage_text, stdout);
			else
				printf("hf-fetch (libquant) %s\n", lq_version());
			return fclose(stdout) ? 1 : 0;
		default:
			free(inc);
			free(exc);
			fprintf(stderr, "Try '%s --help' for more information.\n", argv0);
			return 2;
		}
	}
	if (optind >= argc)
		usage_error("missing REPO_ID");
	const char *repo = argv[optind++];
	if (o.local_dir && cache_dir)
		usage_error("--local-dir and --cache-dir cannot be combined");
	int nfiles = argc - optind;
	/* hf://[TYPE/]ID[@REV][/PATH] (a '/' in REV is written %2F) */
	char *uri = NULL;
	const char *uri_path = NULL;
	if (!strncmp(repo, "hf://", 5)) {
		if (o.revision || o.repo_type)
			usage_error("--revision and --repo-type cannot be combined with an hf:// URI");
		uri = strdup(repo + 5);
		if (!uri) {
			warnx_("out of memory");
			return 1;
		}
		char *p = uri;
		static const struct { const char *pre, *type; } ut[] = {
			{"models/", "model"}, {"datasets/", "dataset"}, {"spaces/", "space"}};
		for (size_t i = 0; i < 3; i++)
			if (!strncmp(p, ut[i].pre, strlen(ut[i].pre))) {
				o.repo_type = ut[i].type;
				p += strlen(ut[i].pre);
				break;
			}
		char *at = strchr(p, '@'), *cut = NULL;
		if (at) {
			*at = 0;
			char *rev = at + 1;
			cut = strchr(rev, '/');
			if (cut)
				*cut = 0;
			/* decode %2F */
			char *w = rev;
			for (char *r = rev; *r; r++) {
				if (r[0] == '%' && r[1] == '2' && (r[2] == 'F' || r[2] == 'f')) {
					*w++ = '/';
					r += 2;
				} else {
					*w++ = *r;
				}
			}
			*w = 0;
			if (!*rev)
				usage_error("empty revision in '%s'", repo);
			o.revision = rev;
		} else {
			char *s1 = strchr(p, '/');
			cut = s1 ? strchr(s1 + 1, '/') : NULL;
			if (cut)
				*cut = 0;
		}
		if (cut && cut[1])
			uri_path = cut + 1;
		if (uri_path && nfiles)
			usage_error("a path in the URI cannot be combined with FILE arguments");
		repo = p;
	}
	/* datasets/org/name, spaces/org/name, models/org/name */
	static const struct { const char *pre, *type; } pres[] = {
		{"datasets/", "dataset"}, {"spaces/", "space"}, {"models/", "model"}};
	for (size_t i = 0; i < 3; i++) {
		size_t l = strlen(pres[i].pre);
		if (!strncmp(repo, pres[i].pre, l) && strchr(repo + l, '/')) {
			if (o.repo_type && strcmp(o.repo_type, pres[i].type))
				usage_error("'%s' contradicts --repo-type %s", repo, o.repo_type);
			o.repo_type = pres[i].type;
			repo += l;
		}
	}
	const char *single = NULL;
	if (uri_path && uri_path[strlen(uri_path) - 1] != '/') {
		single = uri_path;
	} else if (uri_path) {
		if (ninc || nexc)
			warnx_("warning: --include/--exclude are ignored when files are named");
		ninc = nexc = 0;
		inc[ninc++] = uri_path;
	} else if (nfiles == 1 && argv[optind][strlen(argv[optind]) - 1] != '/') {
		single = argv[optind];
	} else if (nfiles >= 1) {
		if (ninc || nexc)
			warnx_("warning: --include/--exclude are ignored when files are named");
		ninc = nexc = 0;
		for (int i = optind; i < argc; i++)
			inc[ninc++] = argv[i];
	}
	o.include = inc;
	o.n_include = ninc;
	o.exclude = exc;
	o.n_exclude = nexc;

	/* environment (huggingface_hub constants.py) */
	char *home = hf_home();
	char *cache = NULL;
	if (cache_dir)
		cache = expand(cache_dir);
	else if (env("HF_HUB_CACHE"))
		cache = expand(env("HF_HUB_CACHE"));
	else if (env("HUGGINGFACE_HUB_CACHE"))
		cache = expand(env("HUGGINGFACE_HUB_CACHE"));
	else if (asprintf(&cache, "%s/hub", home) < 0)
		cache = NULL;
	o.cache_dir = cache;
	o.endpoint = endpoint ? endpoint : env("HF_ENDPOINT");
	char *tok = NULL;
	if (token) {
		tok = clean_token(token);
	} else if (!env_true("HF_HUB_DISABLE_IMPLICIT_TOKEN")) {
		tok = clean_token(env("HF_TOKEN"));
		if (!tok)
			tok = clean_token(env("HUGGING_FACE_HUB_TOKEN"));
		if (!tok) {
			char *path = NULL;
			if (env("HF_TOKEN_PATH"))
				path = expand(env("HF_TOKEN_PATH"));
			else if (asprintf(&path, "%s/token", home) < 0)
				path = NULL;
			if (path)
				tok = read_token_file(path);
			free(path);
		}
	}
	o.token = tok;
	o.offline = opt_offline || env_true("HF_HUB_OFFLINE") ||
		    (!getenv("HF_HUB_OFFLINE") && env_true("TRANSFORMERS_OFFLINE"));
	if (!timeout_set && env("HF_HUB_DOWNLOAD_TIMEOUT")) {
		double t;
		if (!parse_secs(env("HF_HUB_DOWNLOAD_TIMEOUT"), &t) && t > 0)
			o.timeout = t;
	}
	if (env_true("HF_DEBUG"))
		o.verbose = 1;
	o.no_symlinks = env_true("HF_HUB_DISABLE_SYMLINKS");
	/* libcurl reads http_proxy only in lower case */
	if (!getenv("http_proxy") && env("HTTP_PROXY") && o.endpoint &&
	    !strncmp(o.endpoint, "http://", 7))
		o.proxy = env("HTTP_PROXY");
	o.ca_file = env("SSL_CERT_FILE") ? env("SSL_CERT_FILE")
		    : env("REQUESTS_CA_BUNDLE") ? env("REQUESTS_CA_BUNDLE")
		    : env("CURL_CA_BUNDLE");
	o.ca_path = env("SSL_CERT_DIR");

	struct ui u = {.quiet = quiet, .t0 = now_s()};
	u.last_t = u.t0;
	if (!quiet && !env_true("HF_HUB_DISABLE_PROGRESS_BARS"))
		u.bar = isatty(2) || env_false("HF_HUB_DISABLE_PROGRESS_BARS");
	o.progress = on_progress;
	o.progress_ctx = &u;
	o.log = on_log;
	o.log_ctx = &u;

	struct lq_error err = {0};
	char *path = NULL;
	int rc = single ? lq_hub_fetch_file(&o, repo, single, &path, &err)
			: lq_hub_fetch_snapshot(&o, repo, &path, &err);
	clear_bar(&u);
	int status = 0;
	if (rc) {
		warnx_("%s", err.msg[0] ? err.msg : lq_strerror(rc));
		status = rc == LQ_ERR_INVALID ? 2 : 1;
	} else {
		printf("%s\n", path);
	}
	free(path);
	free(uri);
	free(tok);
	free(cache);
	free(home);
	free(inc);
	free(exc);
	if (ferror(stdout) | fclose(stdout)) {
		warnx_("error writing stdout");
		status = 1;
	}
	return status;
}
