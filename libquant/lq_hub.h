/*
 * lq_hub.h - Hugging Face Hub downloads into the standard HF cache (part of
 * the public API, included by libquant.h).
 *
 * The protocol and the cache layout follow shared/docs/hub-protocol.md:
 * blobs named by etag, relative symlinks in snapshots/<commit>/, refs
 * without a trailing newline, .no_exist markers, .locks with flock.  Every
 * file is verified (size, and SHA-256 for 64-hex etags or the git blob SHA-1
 * for 40-hex ones) before it is renamed into blobs/, so nothing unverified
 * ever appears under snapshots/.
 *
 * The library never reads the environment: the caller resolves HF_ENDPOINT,
 * HF_HUB_CACHE, the token, HF_HUB_OFFLINE, ... and passes them here.
 * Network code is libcurl; hashes are OpenSSL EVP.
 */
#ifndef LQ_HUB_H
#define LQ_HUB_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Progress of a fetch, passed to lq_hub_options.progress. */
struct lq_hub_progress {
	const char *file;      /* path in the repo of the file that moved, or NULL */
	uint64_t file_done;    /* bytes of that file on disk so far */
	uint64_t file_total;   /* its size */
	uint64_t done;         /* bytes of all selected files present so far */
	uint64_t total;        /* total size of all selected files */
	int files_done;        /* files verified and linked so far */
	int files_total;       /* files selected */
	int finished;          /* 1 on the very last call of a fetch */
};

/*
 * Progress callback.  Called from worker threads, but never concurrently
 * (the library serializes the calls), at most about ten times a second
 * plus once per finished file.  Return non-zero to cancel the fetch
 * (it then fails with LQ_ERR_INTERRUPTED).
 */
typedef int (*lq_hub_progress_fn)(void *ctx, const struct lq_hub_progress *p);

/* Log callback for warnings and notes ("waiting for lock ...").  Same
 * threading rule as the progress callback.  msg is one line, no newline. */
typedef void (*lq_hub_log_fn)(void *ctx, const char *msg);

/*
 * Options of a fetch.  Zero-initialise, then set what you need; every zero
 * field takes the default named in its comment.  Strings are borrowed for
 * the duration of the call.
 */
struct lq_hub_options {
	const char *endpoint;   /* base URL; default "https://huggingface.co" */
	const char *cache_dir;  /* HF hub cache root (required unless local_dir) */
	const char *local_dir;  /* if set: real files under this directory with
				   .cache/huggingface metadata, as hf download --local-dir */
	const char *token;      /* bearer token, sent only to the endpoint host; NULL = none */
	const char *repo_type;  /* "model" (default), "dataset" or "space" */
	const char *revision;   /* branch, tag or commit; default "main" */
	const char *const *include; /* fnmatch patterns (huggingface_hub semantics) */
	size_t n_include;
	const char *const *exclude;
	size_t n_exclude;
	int offline;            /* no network: resolve from the cache only */
	int force;              /* re-download even if cached */
	int no_symlinks;        /* snapshot entries are hard links or copies of the
				   blobs, not symlinks (HF_HUB_DISABLE_SYMLINKS) */
	int jobs;               /* files downloaded in parallel; default 8 */
	int connections;        /* ranged connections per large file; default 8; 1 = single stream */
	uint64_t chunk_size;    /* bytes per ranged chunk; default 16 MiB, at least 64 KiB */
	uint64_t chunk_min;     /* files at least this large are chunked; default 64 MiB */
	int max_retries;        /* retries per request on 5xx/429/network errors; default 5;
				   negative = none */
	double retry_delay;     /* first backoff delay in seconds (doubles, max 8 s
				   unless larger); default 1 */
	double timeout;         /* connect timeout and stall limit, seconds; default 10 */
	double lock_timeout;    /* give up waiting for a cache lock after this many
				   seconds; 0 = wait forever (logging every 10 s) */
	const char *user_agent; /* default "hf-fetch/<libquant version>" */
	const char *proxy;      /* CURLOPT_PROXY; NULL = libcurl's own env handling */
	const char *noproxy;    /* CURLOPT_NOPROXY */
	const char *ca_file;    /* CURLOPT_CAINFO */
	const char *ca_path;    /* CURLOPT_CAPATH */
	int verbose;            /* log every HTTP request through log() */
	lq_hub_progress_fn progress;
	void *progress_ctx;
	lq_hub_log_fn log;
	void *log_ctx;
};

/*
 * Download one file of a repo (or find it in the cache) and return the
 * absolute path of its snapshot pointer (cache mode) or of the real file
 * (local_dir mode) in *path_out, a malloc'ed string the caller frees.
 * With a 40-hex revision and the file cached, no request is made.
 * Errors: LQ_ERR_NOTFOUND (repo, revision or file; the message says which),
 * LQ_ERR_AUTH (gated, private, bad token), LQ_ERR_NETWORK, LQ_ERR_CHECKSUM,
 * LQ_ERR_NOSPACE, LQ_ERR_IO, LQ_ERR_INVALID (bad repo id, file name or
 * option), LQ_ERR_INTERRUPTED.
 */
int lq_hub_fetch_file(const struct lq_hub_options *opt, const char *repo_id,
		      const char *filename, char **path_out, struct lq_error *err);

/*
 * Download every file of a repo at a revision that passes the include /
 * exclude filters (or resolve it from the cache when offline) and return the
 * absolute snapshot directory (or the local_dir) in *path_out, malloc'ed,
 * caller frees.  Succeeds only when every selected file is present and
 * verified.  When the revision is a branch or tag and a listed file answers
 * 404 (a force-push after the hub resolved the revision), the branch is
 * resolved again and, if it moved, the snapshot starts over once on the new
 * commit (a log line says so); refs/<revision> names only a commit actually
 * downloaded.  Errors as lq_hub_fetch_file.
 */
int lq_hub_fetch_snapshot(const struct lq_hub_options *opt, const char *repo_id,
			  char **path_out, struct lq_error *err);

/* --------------------------------------------------------- helpers */

/*
 * huggingface_hub's filter_repo_objects for one path: 1 if kept.  Patterns
 * use Python fnmatchcase: '*' and '?' also match '/', [seq] / [!seq],
 * no escapes; a pattern ending in '/' gets '*' appended; '\' becomes '/'.
 */
int lq_hub_path_selected(const char *path, const char *const *include, size_t n_include,
			 const char *const *exclude, size_t n_exclude);

/* Python fnmatch.fnmatchcase(name, pat) (no '\' mapping): 1 on a match. */
int lq_hub_fnmatch(const char *pat, const char *name);

/* Repo id check as huggingface_hub's validator: LQ_OK or LQ_ERR_INVALID. */
int lq_hub_check_repo_id(const char *repo_id, struct lq_error *err);

/* Relative file name check (no "..", no absolute or empty segment, no
 * backslash, no control characters): LQ_OK or LQ_ERR_INVALID. */
int lq_hub_check_filename(const char *filename, struct lq_error *err);

/*
 * Cache folder name of a repo: "models--org--name" etc.  Writes at most
 * size bytes including the NUL; returns LQ_OK, or LQ_ERR_INVALID for a bad
 * repo type or a too small buffer.
 */
int lq_hub_repo_folder(char *buf, size_t size, const char *repo_type, const char *repo_id);

/* Normalise an ETag header value (strip W/ and quotes) into buf; returns 1
 * if the result is a valid blob name (40 or 64 lowercase hex), else 0. */
int lq_hub_normalize_etag(const char *etag, char *buf, size_t size);

/*
 * Hash a file's content as the blob name expects: SHA-256 hex for a 64-hex
 * etag, git blob SHA-1 hex ("blob <len>\0" + content) for a 40-hex one.
 * hex receives 65 bytes at most.  LQ_OK or LQ_ERR_IO / LQ_ERR_INVALID.
 */
int lq_hub_hash_file(const char *path, int git_sha1, char hex[65], uint64_t *size_out,
		     struct lq_error *err);

#ifdef __cplusplus
}
#endif

#endif
