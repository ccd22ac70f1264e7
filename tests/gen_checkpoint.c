/*
 * gen_checkpoint - write a synthetic Llama-architecture Hugging Face
 * checkpoint (config.json, generation_config.json, safetensors shards and
 * their index) with deterministic N(0, std) weights.  Used by the tests, the
 * demo and the benchmarks (an 8B-shaped 16 GB checkpoint with --preset 8b).
 *
 * usage: gen_checkpoint [options] OUTDIR
 *   --preset tiny|small|8b   shapes (default tiny)
 *   --layers N --hidden N --intermediate N --heads N --kv-heads N --vocab N
 *   --dtype bf16|f16|f32     (default bf16)
 *   --shards N               (default 1: model.safetensors; >1: sharded + index)
 *   --seed N                 (default 1)
 *   --tied                   tie embeddings (no lm_head.weight)
 *   --poison NAME[:VALUE]    write NaN (or VALUE: inf, -inf or a number) into element 5 of tensor NAME
 */
#include "libquant.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct cfg {
	int layers, hidden, inter, heads, kv, vocab, dtype, shards, tied;
	uint64_t seed;
	const char *poison, *poison_val;
};

struct tspec {
	char name[96];
	int ndim;
	uint64_t shape[2];
	float std; /* 0: ones (norms) */
};

static uint64_t rng(uint64_t *s)
{
	uint64_t x = *s += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

static float gauss(uint64_t *s)
{
	double u = ((double)(rng(s) >> 11) + 0.5) * 0x1p-53, v = (double)(rng(s) >> 11) * 0x1p-53;
	return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}

static void die(const char *msg, const char *arg)
{
	fprintf(stderr, "gen_checkpoint: %s%s%s\n", msg, arg ? ": " : "", arg ? arg : "");
	exit(1);
}

static int ntensors(const struct cfg *c) { return 2 + !c->tied + 9 * c->layers; }

static void specs(const struct cfg *c, struct tspec *t)
{
	int hd = c->hidden / c->heads, k = 0;
	uint64_t H = (uint64_t)c->hidden, I = (uint64_t)c->inter, KV = (uint64_t)c->kv * (uint64_t)hd;
	t[k++] = (struct tspec){"model.embed_tokens.weight", 2, {(uint64_t)c->vocab, H}, 0.02f};
	for (int l = 0; l < c->layers; l++) {
		static const char *const nm[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
						 "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"};
		uint64_t sh[7][2] = {{H, H}, {KV, H}, {KV, H}, {H, H}, {I, H}, {I, H}, {H, I}};
		t[k] = (struct tspec){"", 1, {H, 0}, 0};
		snprintf(t[k++].name, 96, "model.layers.%d.input_layernorm.weight", l);
		for (int i = 0; i < 7; i++) {
			t[k] = (struct tspec){"", 2, {sh[i][0], sh[i][1]}, 0.02f};
			snprintf(t[k++].name, 96, "model.layers.%d.%s.weight", l, nm[i]);
		}
		t[k] = (struct tspec){"", 1, {H, 0}, 0};
		snprintf(t[k++].name, 96, "model.layers.%d.post_attention_layernorm.weight", l);
	}
	t[k++] = (struct tspec){"model.norm.weight", 1, {H, 0}, 0};
	if (!c->tied)
		t[k++] = (struct tspec){"lm_head.weight", 2, {(uint64_t)c->vocab, H}, 0.02f};
}

static uint64_t nelem(const struct tspec *t) { return t->ndim == 1 ? t->shape[0] : t->shape[0] * t->shape[1]; }

static void put(void *dst, int dtype, uint64_t i, float v)
{
	if (dtype == LQ_DTYPE_F32)
		((float *)dst)[i] = v;
	else if (dtype == LQ_DTYPE_BF16)
		((uint16_t *)dst)[i] = lq_f32_to_bf16(v);
	else
		((uint16_t *)dst)[i] = lq_f32_to_f16(v);
}

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	if (!f || fputs(text, f) < 0 || fclose(f))
		die("cannot write", path);
}

int main(int argc, char **argv)
{
	struct cfg c = {2, 256, 688, 4, 2, 512, LQ_DTYPE_BF16, 1, 0, 1, NULL, NULL};
	static const struct option lo[] = {
		{"preset", 1, 0, 'p'}, {"layers", 1, 0, 'l'}, {"hidden", 1, 0, 'H'}, {"intermediate", 1, 0, 'I'},
		{"heads", 1, 0, 'a'},  {"kv-heads", 1, 0, 'k'}, {"vocab", 1, 0, 'v'}, {"dtype", 1, 0, 'd'},
		{"shards", 1, 0, 's'}, {"seed", 1, 0, 'S'},   {"tied", 0, 0, 't'},   {"poison", 1, 0, 'P'},
		{0, 0, 0, 0}};
	int o;
	while ((o = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (o) {
		case 'p':
			if (!strcmp(optarg, "tiny"))
				c = (struct cfg){2, 256, 688, 4, 2, 512, c.dtype, c.shards, c.tied, c.seed, c.poison, NULL};
			else if (!strcmp(optarg, "small"))
				c = (struct cfg){4, 512, 1376, 8, 4, 4096, c.dtype, c.shards, c.tied, c.seed, c.poison, NULL};
			else if (!strcmp(optarg, "8b"))
				c = (struct cfg){32, 4096, 14336, 32, 8, 128256, c.dtype, 4, 0, c.seed, c.poison, NULL};
			else
				die("unknown preset", optarg);
			break;
		case 'l': c.layers = atoi(optarg); break;
		case 'H': c.hidden = atoi(optarg); break;
		case 'I': c.inter = atoi(optarg); break;
		case 'a': c.heads = atoi(optarg); break;
		case 'k': c.kv = atoi(optarg); break;
		case 'v': c.vocab = atoi(optarg); break;
		case 'd':
			c.dtype = !strcmp(optarg, "f32") ? LQ_DTYPE_F32 : !strcmp(optarg, "f16") ? LQ_DTYPE_F16 :
				  !strcmp(optarg, "bf16") ? LQ_DTYPE_BF16 : -1;
			if (c.dtype < 0)
				die("unknown dtype", optarg);
			break;
		case 's': c.shards = atoi(optarg); break;
		case 'S': c.seed = strtoull(optarg, NULL, 10); break;
		case 't': c.tied = 1; break;
		case 'P': {
			char *colon = strchr(optarg, ':');
			if (colon)
				*colon = 0;
			c.poison = optarg;
			c.poison_val = colon ? colon + 1 : "nan";
			char *end;
			strtof(c.poison_val, &end);
			if (end == c.poison_val || *end)
				die("bad --poison value", c.poison_val);
			break;
		}
		default: die("bad option", NULL);
		}
	}
	if (optind + 1 != argc)
		die("usage: gen_checkpoint [options] OUTDIR", NULL);
	if (c.layers < 1 || c.hidden < 8 || c.heads < 1 || c.kv < 1 || c.hidden % c.heads || c.heads % c.kv ||
	    c.shards < 1 || c.inter < 1 || c.vocab < 1)
		die("inconsistent shapes", NULL);
	const char *dir = argv[optind];
	if (mkdir(dir, 0755) < 0 && errno != EEXIST)
		die("cannot create", dir);
	char path[4096], buf[4096];
	const char *dts = c.dtype == LQ_DTYPE_F32 ? "float32" : c.dtype == LQ_DTYPE_F16 ? "float16" : "bfloat16";
	snprintf(buf, sizeof buf,
		 "{\n  \"architectures\": [\"LlamaForCausalLM\"],\n  \"model_type\": \"llama\",\n"
		 "  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n  \"num_hidden_layers\": %d,\n"
		 "  \"num_attention_heads\": %d,\n  \"num_key_value_heads\": %d,\n  \"head_dim\": %d,\n"
		 "  \"vocab_size\": %d,\n  \"max_position_embeddings\": 2048,\n  \"rms_norm_eps\": 1e-05,\n"
		 "  \"rope_theta\": 500000.0,\n  \"hidden_act\": \"silu\",\n  \"attention_bias\": false,\n"
		 "  \"mlp_bias\": false,\n  \"tie_word_embeddings\": %s,\n  \"bos_token_id\": 1,\n"
		 "  \"eos_token_id\": 2,\n  \"torch_dtype\": \"%s\"\n}\n",
		 c.hidden, c.inter, c.layers, c.heads, c.kv, c.hidden / c.heads, c.vocab, c.tied ? "true" : "false", dts);
	snprintf(path, sizeof path, "%s/config.json", dir);
	write_file(path, buf);
	snprintf(path, sizeof path, "%s/generation_config.json", dir);
	write_file(path, "{\n  \"bos_token_id\": 1,\n  \"eos_token_id\": 2,\n  \"do_sample\": false\n}\n");

	int nt = ntensors(&c);
	struct tspec *t = calloc((size_t)nt, sizeof *t);
	specs(&c, t);
	size_t esz = lq_dtype_size(c.dtype);
	uint64_t total = 0;
	for (int i = 0; i < nt; i++)
		total += nelem(&t[i]) * esz;
	/* split into shards of about equal size, in tensor order */
	int *shard_of = calloc((size_t)nt, sizeof *shard_of);
	uint64_t acc = 0;
	for (int i = 0; i < nt; i++) {
		int s = (int)(acc * (uint64_t)c.shards / (total ? total : 1));
		shard_of[i] = s < c.shards ? s : c.shards - 1;
		acc += nelem(&t[i]) * esz;
	}
	char *index = malloc((size_t)nt * 200 + 256);
	size_t ilen = (size_t)sprintf(index, "{\n  \"metadata\": {\"total_size\": %llu},\n  \"weight_map\": {\n",
				      (unsigned long long)total);
	uint64_t seed = c.seed;
	const char *dtn = lq_dtype_name(c.dtype);
	for (int s = 0; s < c.shards; s++) {
		char fname[128];
		if (c.shards == 1)
			snprintf(fname, sizeof fname, "model.safetensors");
		else
			snprintf(fname, sizeof fname, "model-%05d-of-%05d.safetensors", s + 1, c.shards);
		/* header */
		size_t hcap = 256 + (size_t)nt * 200, hl = 0;
		char *h = malloc(hcap);
		uint64_t off = 0;
		hl += (size_t)sprintf(h + hl, "{\"__metadata__\":{\"format\":\"pt\"}");
		for (int i = 0; i < nt; i++) {
			if (shard_of[i] != s)
				continue;
			uint64_t nb = nelem(&t[i]) * esz;
			if (t[i].ndim == 1)
				hl += (size_t)sprintf(h + hl, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%llu],\"data_offsets\":[%llu,%llu]}",
						      t[i].name, dtn, (unsigned long long)t[i].shape[0], (unsigned long long)off,
						      (unsigned long long)(off + nb));
			else
				hl += (size_t)sprintf(h + hl, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%llu,%llu],\"data_offsets\":[%llu,%llu]}",
						      t[i].name, dtn, (unsigned long long)t[i].shape[0],
						      (unsigned long long)t[i].shape[1], (unsigned long long)off,
						      (unsigned long long)(off + nb));
			off += nb;
			ilen += (size_t)sprintf(index + ilen, "%s    \"%s\": \"%s\"", ilen > 80 && index[ilen - 1] == '"' ? ",\n" : "",
						t[i].name, fname);
		}
		hl += (size_t)sprintf(h + hl, "}");
		while (hl % 8)
			h[hl++] = ' ';
		snprintf(path, sizeof path, "%s/%s", dir, fname);
		FILE *f = fopen(path, "wb");
		if (!f)
			die("cannot write", path);
		uint8_t len8[8];
		for (int b = 0; b < 8; b++)
			len8[b] = (uint8_t)((uint64_t)hl >> (8 * b));
		fwrite(len8, 1, 8, f);
		fwrite(h, 1, hl, f);
		free(h);
		size_t chunk = 1 << 20;
		void *buf2 = malloc(chunk * 4);
		for (int i = 0; i < nt; i++) {
			if (shard_of[i] != s)
				continue;
			uint64_t n = nelem(&t[i]);
			int poison = c.poison && strcmp(c.poison, t[i].name) == 0;
			for (uint64_t b = 0; b < n; b += chunk) {
				size_t m = (size_t)(n - b < chunk ? n - b : chunk);
				for (size_t e = 0; e < m; e++) {
					float v = t[i].std > 0 ? t[i].std * gauss(&seed) : 1.0f;
					if (poison && b + e == 5)
						v = !strcmp(c.poison_val, "nan") ? NAN : strtof(c.poison_val, NULL);
					put(buf2, c.dtype, e, v);
				}
				if (fwrite(buf2, esz, m, f) != m)
					die("write failed", path);
			}
		}
		free(buf2);
		if (fclose(f))
			die("write failed", path);
	}
	ilen += (size_t)sprintf(index + ilen, "\n  }\n}\n");
	if (c.shards > 1) {
		snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
		write_file(path, index);
	}
	free(index);
	free(shard_of);
	free(t);
	return 0;
}
