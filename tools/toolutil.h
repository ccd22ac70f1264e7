/*
 * toolutil.h - what every tool needs and the library must not do: messages,
 * exit codes, progress bars, atomic output files.  Header-only (static), so
 * each tool stays one file over the public header.
 *
 * Exit status: 0 success, 1 failure, 2 usage error.
 */
#ifndef LQ_TOOLUTIL_H
#define LQ_TOOLUTIL_H

#include "libquant.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char *argv0 = "libquant";

/* "tool: message"; a message ending in ':' gets ": strerror(errno)". */
static void vmsg(const char *fmt, va_list ap)
{
	int e = errno;
	fprintf(stderr, "%s: ", argv0);
	vfprintf(stderr, fmt, ap);
	size_t n = strlen(fmt);
	if (n && fmt[n - 1] == ':')
		fprintf(stderr, " %s", strerror(e));
	fputc('\n', stderr);
}

static void warnx_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void warnx_(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vmsg(fmt, ap);
	va_end(ap);
}

static void out_cleanup(void);

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vmsg(fmt, ap);
	va_end(ap);
	out_cleanup();
	exit(1);
}

/* Die with the library's detail message. */
static void die_lq(int rc, const struct lq_error *e) __attribute__((noreturn));
static void die_lq(int rc, const struct lq_error *e)
{
	die("%s", e && e->msg[0] ? e->msg : lq_strerror(rc));
}

/* A usage error: "tool: message", a hint, exit 2. */
static void usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn, unused));
static void usage_error(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vmsg(fmt, ap);
	va_end(ap);
	fprintf(stderr, "Try '%s --help' for more information.\n", argv0);
	exit(2);
}

/* --help prints text to stdout and exits 0; a usage error only the hint. */
static void usage_exit(const char *text, int status) __attribute__((noreturn, unused));
static void usage_exit(const char *text, int status)
{
	if (status)
		fprintf(stderr, "Try '%s --help' for more information.\n", argv0);
	else
		fputs(text, stdout);
	exit(status);
}

/* All of a stream, NUL-terminated (malloc'ed; the caller frees); dies on
 * read errors, naming `what`. */
static __attribute__((unused)) char *read_stream(FILE *fp, size_t *len, const char *what)
{
	size_t cap = 1 << 16, n = 0, k;
	char *buf = malloc(cap + 1);
	if (!buf)
		die("out of memory");
	while ((k = fread(buf + n, 1, cap - n, fp)) > 0) {
		n += k;
		if (n == cap) {
			cap *= 2;
			char *nb = realloc(buf, cap + 1);
			if (!nb)
				die("out of memory");
			buf = nb;
		}
	}
	if (ferror(fp))
		die("%s: read error:", what);
	buf[n] = 0;
	*len = n;
	return buf;
}

/* A whole file (as read_stream), or NULL when it cannot be opened. */
static __attribute__((unused)) char *slurp_file(const char *path, size_t *len)
{
	FILE *fp = fopen(path, "rb");
	if (!fp)
		return NULL;
	char *buf = read_stream(fp, len, path);
	fclose(fp);
	return buf;
}

/* Check stdout at exit: a failed write (full disk, closed pipe) is an error. */
static int finish_stdout(void)
{
	if (fflush(stdout) || ferror(stdout) || fclose(stdout)) {
		if (errno != EPIPE)
			fprintf(stderr, "%s: write error on stdout: %s\n", argv0, strerror(errno));
		return 1;
	}
	return 0;
}

static int parse_int(const char *s, long lo, long hi, long *out)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi)
		return -1;
	*out = v;
	return 0;
}

static int ncpus(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	return n < 1 ? 1 : n > 256 ? 256 : (int)n;
}

/* ---------------------------------------------------------- progress bar */

struct progress {
	int on;          /* stderr is a TTY and not quiet */
	double t0, last;
	int drawn;
};

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void progress_init(struct progress *p, int quiet)
{
	p->on = !quiet && isatty(2);
	p->t0 = p->last = now_s();
	p->drawn = 0;
}

static void progress_draw(struct progress *p, uint64_t done, uint64_t total, const char *what, int force)
{
	if (!p->on)
		return;
	double t = now_s();
	if (!force && t - p->last < 0.1)
		return;
	p->last = t;
	double f = total ? (double)done / (double)total : 1.0;
	if (f > 1)
		f = 1;
	char bar[31];
	int w = (int)(f * 30);
	for (int i = 0; i < 30; i++)
		bar[i] = i < w ? '=' : i == w ? '>' : ' ';
	bar[30] = 0;
	double rate = t > p->t0 ? (double)done / (t - p->t0) / 1e9 : 0;
	fprintf(stderr, "\r[%s] %3d%% %6.2f/%.2f GB %5.2f GB/s %-40.40s", bar, (int)(f * 100),
		(double)done / 1e9, (double)total / 1e9, rate, what ? what : "");
	p->drawn = 1;
}

static void progress_end(struct progress *p)
{
	if (p->on && p->drawn)
		fprintf(stderr, "\r%*s\r", 110, "");
	p->drawn = 0;
}

/* ---------------------------------------------------------- atomic output */

/* The temp file being written, removed on failure and on signals. */
static char out_tmp[PATH_MAX];

static void out_cleanup(void)
{
	if (out_tmp[0])
		unlink(out_tmp);
	out_tmp[0] = 0;
}

static void out_signal(int sig)
{
	if (out_tmp[0])
		unlink(out_tmp); /* async-signal-safe */
	signal(sig, SIG_DFL);
	raise(sig);
}

/*
 * Open the output: "-" is stdout (refused on a terminal); otherwise a temp
 * file PATH.tmp.XXXXXX beside PATH, renamed into place by out_commit.
 */
static int out_open(const char *path, int force)
{
	if (strcmp(path, "-") == 0) {
		if (isatty(1))
			die("stdout is a terminal; use -o FILE or redirect the output");
		return 1;
	}
	struct stat sb;
	if (!force && lstat(path, &sb) == 0)
		die("%s: already exists; use -f to overwrite", path);
	if (snprintf(out_tmp, sizeof out_tmp, "%s.tmp.XXXXXX", path) >= (int)sizeof out_tmp)
		die("%s: path too long", path);
	signal(SIGINT, out_signal);
	signal(SIGTERM, out_signal);
	signal(SIGHUP, out_signal);
	signal(SIGPIPE, out_signal);
	int fd = mkstemp(out_tmp);
	if (fd < 0) {
		int e = errno;
		out_tmp[0] = 0;
		errno = e;
		die("%s: cannot create output:", path);
	}
	mode_t um = umask(0);
	umask(um);
	fchmod(fd, 0666 & ~um); /* mkstemp gives 0600; outputs are ordinary files */
	return fd;
}

/* fsync (unless nosync), close and rename into place. */
static void out_commit(int fd, const char *path, int force, int nosync)
{
	if (strcmp(path, "-") == 0)
		return;
	if (!nosync && fsync(fd) < 0)
		die("%s: fsync:", path);
	if (close(fd) < 0)
		die("%s: close:", path);
	if (!force && link(out_tmp, path) == 0) {
		unlink(out_tmp); /* link + unlink: never replaces a file created meanwhile */
	} else if (!force && errno == EEXIST) {
		die("%s: already exists; use -f to overwrite", path);
	} else if (rename(out_tmp, path) < 0) {
		die("%s: rename:", path);
	}
	out_tmp[0] = 0;
}

#endif
