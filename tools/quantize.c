/* quantize - convert a safetensors checkpoint to an LQ file (NF4, FP4, INT8). */
#include "libquant.h"
#include "toolutil.h"

#include <getopt.h>

static const char usage_text[] =
	"usage: quantize [-t nf4|fp4|int8|none] [-b N] [--no-double-quant]\n"
	"                [--compute-dtype bf16|fp16|fp32] [--keep GLOB]... [--quantize GLOB]...\n"
	"                [--quantize-head] [--allow-nonfinite] [-j N] [-f] [-q] [--no-sync]\n"
	"                -o OUT CHECKPOINT\n"
	"\n"
	"CHECKPOINT is a directory with config.json and model.safetensors (or a\n"
	"sharded model.safetensors.index.json), e.g. a Hugging Face cache snapshot,\n"
	"or a bare .safetensors file.\n"
	"\n"
	"  -o, --output OUT        the LQ file to write ('-' for stdout)\n"
	"  -t, --type TYPE         nf4 (default), fp4, int8, or none (store as is)\n"
	"  -b, --block-size N      elements per scale: 32..4096, a power of two (default 64)\n"
	"      --no-double-quant   keep fp32 scales (default: 8-bit scales, as bitsandbytes)\n"
	"      --compute-dtype D   dtype run computes in: bf16 (default), fp16, fp32\n"
	"      --keep GLOB         store tensors whose name matches GLOB unquantized\n"
	"      --quantize GLOB     quantize tensors whose name matches GLOB\n"
	"      --quantize-head     quantize lm_head too\n"
	"      --allow-nonfinite   store NaN/Inf weights instead of refusing\n"
	"  -j, --threads N         worker threads (default: all cores)\n"
	"  -f, --force             overwrite OUT if it exists\n"
	"      --no-sync           do not fsync OUT before renaming it into place\n"
	"  -q, --quiet             no progress bar, no warnings\n"
	"  -h, --help              this help\n"
	"  -V, --version           print the version\n";

static void usage(int status) { usage_exit(usage_text, status); }

struct ctx {
	struct progress bar;
	int quiet;
};

static int on_progress(void *c, uint64_t done, uint64_t total, const char *tensor)
{
	struct ctx *x = c;
	progress_draw(&x->bar, done, total, tensor, 0);
	return 0;
}

static void on_warn(void *c, const char *msg)
{
	struct ctx *x = c;
	if (!x->quiet) {
		progress_end(&x->bar);
		warnx_("warning: %s", msg);
	}
}

int main(int argc, char **argv)
{
	argv0 = "quantize";
	enum { O_NODQ = 256, O_COMPUTE, O_KEEP, O_QUANT, O_HEAD, O_NONFINITE, O_NOSYNC };
	static const struct option lopts[] = {
		{"output", required_argument, 0, 'o'},     {"type", required_argument, 0, 't'},
		{"block-size", required_argument, 0, 'b'}, {"no-double-quant", no_argument, 0, O_NODQ},
		{"compute-dtype", required_argument, 0, O_COMPUTE},
		{"keep", required_argument, 0, O_KEEP},    {"quantize", required_argument, 0, O_QUANT},
		{"quantize-head", no_argument, 0, O_HEAD}, {"allow-nonfinite", no_argument, 0, O_NONFINITE},
		{"threads", required_argument, 0, 'j'},    {"force", no_argument, 0, 'f'},
		{"no-sync", no_argument, 0, O_NOSYNC},     {"quiet", no_argument, 0, 'q'},
		{"help", no_argument, 0, 'h'},             {"version", no_argument, 0, 'V'},
		{0, 0, 0, 0},
	};
	struct lq_pack_opts o;
	lq_pack_opts_init(&o);
	o.nthreads = ncpus();
	const char *out = NULL;
	int force = 0, nosync = 0;
	struct ctx cx = {0};
	const char **keep = calloc((size_t)argc, sizeof *keep), **quant = calloc((size_t)argc, sizeof *quant);
	if (!keep || !quant)
		die("out of memory");
	int c;
	long v;
	while ((c = getopt_long(argc, argv, "o:t:b:j:fqhV", lopts, NULL)) != -1) {
		switch (c) {
		case 'o': out = optarg; break;
		case 't':
			if ((o.qtype = lq_qtype_parse(optarg)) < 0) {
				warnx_("unknown type '%s' (nf4, fp4, int8, none)", optarg);
				usage(2);
			}
			break;
		case 'b':
			if (parse_int(optarg, 32, 4096, &v) || (v & (v - 1))) {
				warnx_("block size must be a power of two from 32 to 4096, not '%s'", optarg);
				usage(2);
			}
			o.block_size = (int)v;
			break;
		case O_NODQ: o.double_quant = 0; break;
		case O_COMPUTE:
			if ((o.compute = lq_compute_parse(optarg)) < 0) {
				warnx_("unknown compute dtype '%s' (bf16, fp16, fp32)", optarg);
				usage(2);
			}
			break;
		case O_KEEP: keep[o.nkeep++] = optarg; break;
		case O_QUANT: quant[o.nquantize++] = optarg; break;
		case O_HEAD: o.quantize_head = 1; break;
		case O_NONFINITE: o.allow_nonfinite = 1; break;
		case 'j':
			if (parse_int(optarg, 1, 256, &v)) {
				warnx_("threads must be 1..256, not '%s'", optarg);
				usage(2);
			}
			o.nthreads = (int)v;
			break;
		case 'f': force = 1; break;
		case O_NOSYNC: nosync = 1; break;
		case 'q': cx.quiet = 1; break;
		case 'h': usage(0); break;
		case 'V': printf("quantize (libquant) %s\n", lq_version()); return finish_stdout();
		default: usage(2);
		}
	}
	if (optind + 1 != argc) {
		warnx_(optind == argc ? "no checkpoint given" : "more than one checkpoint given");
		usage(2);
	}
	if (!out) {
		warnx_("no output file given (-o OUT, or -o - for stdout)");
		usage(2);
	}
	const char *input = argv[optind];
	o.keep = keep;
	o.quantize = quant;
	o.progress = on_progress;
	o.warn = on_warn;
	o.ctx = &cx;
	progress_init(&cx.bar, cx.quiet);

	int fd = out_open(out, force);
	struct lq_error e = {0};
	int rc = lq_pack(input, fd, strcmp(out, "-") ? out : "stdout", &o, &e);
	progress_end(&cx.bar);
	if (rc)
		die_lq(rc, &e);
	out_commit(fd, out, force, nosync);
	free(keep);
	free(quant);
	return finish_stdout();
}
