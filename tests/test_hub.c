/* test_hub.c - hub helpers (patterns, names, etags, hashes) and offline
 * cache resolution.  The network paths are tested by cli_hf_fetch.sh. */
#include "libquant.h"
#include "test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void test_fnmatch(void)
{
	static const struct { const char *pat, *name; int want; } t[] = {
		{"*.json", "config.json", 1},
		{"*.json", "a/b.json", 1},           /* '*' crosses '/' */
		{"data/*.json", "data/sub/x.json", 1},
		{"?", "/", 1},
		{"?", "", 0},
		{"[!a]b", "cb", 1},
		{"[!a]b", "ab", 0},
		{"[^a]b", "^b", 1},                  /* '^' is literal in Python */
		{"[^a]b", "ab", 1},
		{"[^a]b", "cb", 0},
		{"[a-c]x", "bx", 1},
		{"[c-a]x", "bx", 0},                 /* reversed range is empty */
		{"[a-]x", "-x", 1},
		{"[", "[", 1},                       /* unclosed: literal */
		{"a[b", "a[b", 1},
		{"[]]", "]", 1},
		{"[!]]", "a", 1},
		{"[!]]", "]", 0},
		{"**", "a/b/c", 1},
		{"*.safetensors", "model.safetensors.index.json", 0},
		{"", "", 1},
		{"", "a", 0},
		{"a*b*c", "aXbYc", 1},
		{"a*b*c", "aXbY", 0},
		{"*", "", 1},
		{"Model*", "model.bin", 0},          /* case-sensitive */
		{"a\\b", "a\\b", 1},                 /* no escapes */
	};
	for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
		CHECK(lq_hub_fnmatch(t[i].pat, t[i].name) == t[i].want, "'%s' vs '%s'", t[i].pat,
		      t[i].name);
}

static void test_selected(void)
{
	const char *inc[] = {"*.json", "sub/"};
	const char *exc[] = {"tokenizer*"};
	CHECK(lq_hub_path_selected("config.json", inc, 2, exc, 1));
	CHECK(!lq_hub_path_selected("tokenizer.json", inc, 2, exc, 1));
	CHECK(lq_hub_path_selected("sub/dir/x.bin", inc, 2, exc, 1));
	CHECK(!lq_hub_path_selected("model.bin", inc, 2, exc, 1));
	CHECK(lq_hub_path_selected("model.bin", NULL, 0, NULL, 0));
	CHECK(!lq_hub_path_selected("model.bin", NULL, 0, (const char *[]){"*"}, 1));
	const char *bs[] = {"sub\\*.txt"};
	CHECK(lq_hub_path_selected("sub/a.txt", bs, 1, NULL, 0));
}

static void test_names(void)
{
	const char *good[] = {"gpt2", "org/name", "a.b_c-d/E9", "x/y.gitx"};
	const char *bad[] = {"", "/x", "x/", "a/b/c", "a--b", "a..b", "-a", "a-", "org/.x",
			     "x.git", "a b", "org/n@me",
			     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"};
	for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
		CHECK(lq_hub_check_repo_id(good[i], NULL) == LQ_OK, "%s", good[i]);
	struct lq_error e = {0};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		CHECK(lq_hub_check_repo_id(bad[i], &e) == LQ_ERR_INVALID, "%s", bad[i]);
	const char *fgood[] = {"a/b.json", "a b+c.txt", "x", ".gitattributes", "a/.b/c"};
	const char *fbad[] = {"", "/abs", "a//b", "a/../b", "..", ".", "a/.", "a\\b", "c:x",
			      "a\nb", "a/"};
	for (size_t i = 0; i < sizeof fgood / sizeof fgood[0]; i++)
		CHECK(lq_hub_check_filename(fgood[i], NULL) == LQ_OK, "%s", fgood[i]);
	for (size_t i = 0; i < sizeof fbad / sizeof fbad[0]; i++)
		CHECK(lq_hub_check_filename(fbad[i], &e) == LQ_ERR_INVALID, "%s", fbad[i]);

	char buf[64];
	CHECK(lq_hub_repo_folder(buf, sizeof buf, "model", "org/name") == LQ_OK &&
	      !strcmp(buf, "models--org--name"));
	CHECK(lq_hub_repo_folder(buf, sizeof buf, NULL, "gpt2") == LQ_OK &&
	      !strcmp(buf, "models--gpt2"));
	CHECK(lq_hub_repo_folder(buf, sizeof buf, "dataset", "o/d") == LQ_OK &&
	      !strcmp(buf, "datasets--o--d"));
	CHECK(lq_hub_repo_folder(buf, sizeof buf, "kernel", "o/d") == LQ_ERR_INVALID);
	CHECK(lq_hub_repo_folder(buf, 12, "model", "org/name") == LQ_ERR_INVALID);
}

static void test_etag(void)
{
	char b[80];
	const char *sha1 = "a661b1bd0bd7a1e2a5e1f4d0a6bd6f3a4b9c8e7d";
	const char *sha256 = "a7a17d6d844b5de815ccab5f42cad6d24496db3850a2a43d8258221018ce87d2";
	char q[100];
	snprintf(q, sizeof q, "\"%s\"", sha1);
	CHECK(lq_hub_normalize_etag(q, b, sizeof b) && !strcmp(b, sha1));
	snprintf(q, sizeof q, "W/\"%s\"", sha256);
	CHECK(lq_hub_normalize_etag(q, b, sizeof b) && !strcmp(b, sha256));
	CHECK(lq_hub_normalize_etag(sha256, b, sizeof b));
	CHECK(!lq_hub_normalize_etag("\"../../etc/passwd\"", b, sizeof b));
	CHECK(!lq_hub_normalize_etag("\"A661B1BD0BD7A1E2A5E1F4D0A6BD6F3A4B9C8E7D\"", b, sizeof b));
	CHECK(!lq_hub_normalize_etag("\"abc\"", b, sizeof b));
	CHECK(!lq_hub_normalize_etag(NULL, b, sizeof b));
	CHECK(!lq_hub_normalize_etag(q, b, 10));
}

static void write_file(const char *path, const char *s)
{
	FILE *f = fopen(path, "wb");
	if (f) {
		fputs(s, f);
		fclose(f);
	}
}

static void test_hash(const char *dir)
{
	char p[512], hex[65];
	uint64_t n = 0;
	snprintf(p, sizeof p, "%s/h.txt", dir);
	write_file(p, "hello\n");
	CHECK_OK(lq_hub_hash_file(p, 1, hex, &n, NULL), (struct lq_error *)NULL);
	CHECK(!strcmp(hex, "ce013625030ba8dba906f756967f9e9ca394464a") && n == 6, "%s", hex);
	CHECK_OK(lq_hub_hash_file(p, 0, hex, &n, NULL), (struct lq_error *)NULL);
	CHECK(!strcmp(hex, "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"), "%s",
	      hex);
	write_file(p, "");
	CHECK_OK(lq_hub_hash_file(p, 1, hex, &n, NULL), (struct lq_error *)NULL);
	CHECK(!strcmp(hex, "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391") && n == 0, "%s", hex);
	struct lq_error e = {0};
	snprintf(p, sizeof p, "%s/none", dir);
	CHECK(lq_hub_hash_file(p, 0, hex, &n, &e) == LQ_ERR_IO && strstr(e.msg, "none"));
}

static void test_offline(const char *dir)
{
	const char *commit = "0123456789abcdef0123456789abcdef01234567";
	char p[2048], cache[128];
	snprintf(cache, sizeof cache, "%s/cache", dir);
	snprintf(p, sizeof p, "mkdir -p %s/models--org--m/refs %s/models--org--m/blobs "
		 "%s/models--org--m/snapshots/%s %s/models--org--m/.no_exist/%s",
		 cache, cache, cache, commit, cache, commit);
	CHECK(system(p) == 0);
	snprintf(p, sizeof p, "%s/models--org--m/refs/main", cache);
	write_file(p, commit);
	snprintf(p, sizeof p, "%s/models--org--m/blobs/e69de29bb2d1d6434b8b29ae775ad8c2e48c5391",
		 cache);
	write_file(p, "");
	snprintf(p, sizeof p, "%s/models--org--m/snapshots/%s/config.json", cache, commit);
	CHECK(symlink("../../blobs/e69de29bb2d1d6434b8b29ae775ad8c2e48c5391", p) == 0);
	snprintf(p, sizeof p, "%s/models--org--m/.no_exist/%s/added_tokens.json", cache, commit);
	write_file(p, "");

	struct lq_hub_options o = {.cache_dir = cache, .offline = 1};
	struct lq_error e = {0};
	char *out = NULL;
	CHECK_OK(lq_hub_fetch_file(&o, "org/m", "config.json", &out, &e), &e);
	snprintf(p, sizeof p, "/models--org--m/snapshots/%s/config.json", commit);
	CHECK(out && strstr(out, p), "%s", out ? out : "(null)");
	free(out);
	out = NULL;
	CHECK_OK(lq_hub_fetch_snapshot(&o, "org/m", &out, &e), &e);
	CHECK(out && strstr(out, commit));
	free(out);
	out = NULL;
	CHECK(lq_hub_fetch_file(&o, "org/m", "added_tokens.json", &out, &e) == LQ_ERR_NOTFOUND &&
	      strstr(e.msg, "does not exist"), "%s", e.msg);
	CHECK(lq_hub_fetch_file(&o, "org/m", "model.bin", &out, &e) == LQ_ERR_NOTFOUND &&
	      strstr(e.msg, "offline"), "%s", e.msg);
	o.revision = "v2";
	CHECK(lq_hub_fetch_snapshot(&o, "org/m", &out, &e) == LQ_ERR_NOTFOUND &&
	      strstr(e.msg, "revision 'v2'"), "%s", e.msg);
	o.revision = commit;
	CHECK_OK(lq_hub_fetch_file(&o, "org/m", "config.json", &out, &e), &e);
	free(out);
	out = NULL;
	o.revision = NULL;
	CHECK(lq_hub_fetch_file(&o, "org/m", "../x", &out, &e) == LQ_ERR_INVALID);
	CHECK(lq_hub_fetch_file(&o, "bad--id", "x", &out, &e) == LQ_ERR_INVALID);
	o.repo_type = "kernel";
	CHECK(lq_hub_fetch_file(&o, "org/m", "x", &out, &e) == LQ_ERR_INVALID);
	CHECK(lq_hub_fetch_file(NULL, "org/m", "x", &out, &e) == LQ_ERR_INVALID);
	CHECK(out == NULL);
}

int main(void)
{
	char dir[] = "/tmp/test_hub.XXXXXX";
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	test_fnmatch();
	test_selected();
	test_names();
	test_etag();
	test_hash(dir);
	test_offline(dir);
	char cmd[600];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "warning: cannot remove %s\n", dir);
	return test_summary();
}
