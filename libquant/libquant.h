/*
 * libquant.h - the one public header of libquant.
 *
 * libquant reads Hugging Face safetensors checkpoints, quantizes their
 * weights blockwise (NF4, FP4, INT8, with bitsandbytes' double quant of the
 * scales) and reads and writes the LQ packed format (formats/LQ-FORMAT.md).
 *
 * Rules of the API:
 *  - The library never prints, exits or reads the environment.
 *  - Functions that can fail return an lq_err code (0 = LQ_OK) and, when the
 *    caller passes a struct lq_error, fill it with a one-line detail message
 *    that names the file and the problem.  lq_strerror() names a code.
 *  - Handles are created by lq_x_open()/lq_x_create() and released by
 *    lq_x_close()/lq_x_free(); passing NULL to a free function is allowed.
 *  - Memory returned by the library belongs to the handle it came from unless
 *    the comment on the function says otherwise.
 *
 * Sub-headers (included at the end) add the tokenizer, chat template, model
 * description and hub modules; tools include only this file.
 */
#ifndef LIBQUANT_H
#define LIBQUANT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LQ_VERSION_STRING "0.1.0"

/* ---------------------------------------------------------------- errors */

/* Error codes.  Values are pinned: never renumber, never reuse. */
enum lq_err {
	LQ_OK = 0,
	LQ_ERR_IO = 1,          /* open/read/write/rename failed (errno in detail) */
	LQ_ERR_NOMEM = 2,       /* allocation failed */
	LQ_ERR_FORMAT = 3,      /* malformed or corrupt input file */
	LQ_ERR_UNSUPPORTED = 4, /* valid input we do not handle (dtype, arch, version) */
	LQ_ERR_INVALID = 5,     /* bad argument from the caller */
	LQ_ERR_NONFINITE = 6,   /* NaN or Inf in a tensor that is being quantized */
	LQ_ERR_CHECKSUM = 7,    /* stored checksum does not match the data */
	LQ_ERR_NOTFOUND = 8,    /* named tensor/file/key is not there */
	LQ_ERR_NOSPACE = 9,     /* disk full (ENOSPC/EDQUOT) */
	LQ_ERR_NETWORK = 10,    /* network transfer failed */
	LQ_ERR_AUTH = 11,       /* unauthorized / gated */
	LQ_ERR_SHAPE = 12,      /* tensor shape does not fit what is required */
	LQ_ERR_INTERRUPTED = 13 /* cancelled by the caller's callback */
};

/* Detail buffer filled by failing calls (may be passed as NULL). */
struct lq_error {
	int code;
	char msg[1024];
};

/* Name of an error code ("I/O error", ...).  Never NULL. */
const char *lq_strerror(int code);

/* Library version string, e.g. "0.1.0". */
const char *lq_version(void);

/* ---------------------------------------------------------------- types */

/* Element types of source tensors.  Values are pinned (they appear in LQ files). */
enum lq_dtype {
	LQ_DTYPE_F32 = 0,
	LQ_DTYPE_F16 = 1,
	LQ_DTYPE_BF16 = 2,
	LQ_DTYPE_U8 = 3,
	LQ_DTYPE_I8 = 4,
	LQ_DTYPE_COUNT
};

/* Storage types of tensors in an LQ file.  Values are pinned. */
enum lq_qtype {
	LQ_QTYPE_NONE = 0, /* stored as in the source, dtype = source dtype */
	LQ_QTYPE_NF4 = 1,  /* bitsandbytes NF4, 2 codes per byte, high nibble first */
	LQ_QTYPE_FP4 = 2,  /* bitsandbytes FP4 */
	LQ_QTYPE_INT8 = 3, /* symmetric absmax int8 per block */
	LQ_QTYPE_COUNT
};

/* Compute dtypes recorded for run. */
enum lq_compute {
	LQ_COMPUTE_BF16 = 0,
	LQ_COMPUTE_F16 = 1,
	LQ_COMPUTE_F32 = 2
};

#define LQ_MAX_DIMS 8
#define LQ_NESTED_BLOCK 256 /* double-quant block of the scales (fixed, as bnb) */

const char *lq_dtype_name(int dtype);   /* "F32", "F16", "BF16", "U8", "I8" */
size_t lq_dtype_size(int dtype);        /* bytes per element, 0 if unknown */
const char *lq_qtype_name(int qtype);   /* "none", "nf4", "fp4", "int8" */
int lq_qtype_parse(const char *s);      /* -1 if unknown */
const char *lq_compute_name(int c);     /* "bf16", "fp16", "fp32" */
int lq_compute_parse(const char *s);    /* -1 if unknown */

/* float conversions (round to nearest even, NaN preserved) */
float lq_bf16_to_f32(uint16_t h);
uint16_t lq_f32_to_bf16(float f);
float lq_f16_to_f32(uint16_t h);
uint16_t lq_f32_to_f16(float f);

/* Convert n source elements of dtype (F32/F16/BF16) to float. */
void lq_to_f32(float *dst, const void *src, int dtype, size_t n);

/* ---------------------------------------------------------- quantization */

/*
 * Blockwise quantization of a flat run of n elements (row-major flattening of
 * the tensor), bit-exact with bitsandbytes' CUDA quantize_4bit for NF4/FP4.
 *
 * A quantized tensor has up to three parts:
 *   data    4-bit: (n+1)/2 bytes, element 2j in the high nibble of byte j;
 *           INT8: n signed bytes
 *   scales  without double quant: float32 absmax[nb];  with: uint8 codes[nb]
 *   nested  with double quant only: float32 nested_absmax[ceil(nb/256)]
 * plus, with double quant, the float32 offset (mean of the absmax values).
 * nb = ceil(n / block_size).
 */
struct lq_qparams {
	int qtype;        /* LQ_QTYPE_NF4, _FP4, _INT8 */
	int block_size;   /* power of two, 32..4096 */
	int double_quant; /* quantize the scales (bnb compress_statistics) */
};

/* Sizes in bytes of the three parts for n elements. */
size_t lq_qdata_bytes(int qtype, uint64_t n);
size_t lq_qscale_bytes(const struct lq_qparams *p, uint64_t n);
size_t lq_qnested_bytes(const struct lq_qparams *p, uint64_t n);
uint64_t lq_qnblocks(uint64_t n, int block_size);

/* Check qtype/block size; LQ_ERR_INVALID with a message if unusable. */
int lq_qparams_check(const struct lq_qparams *p, struct lq_error *err);

/* Output/input buffers of a quantized tensor (caller-owned memory). */
struct lq_qbuf {
	uint8_t *data;
	void *scales;          /* float[nb] or uint8_t[nb] (double quant) */
	float *nested;         /* float[ceil(nb/256)] or NULL */
	float offset;          /* double quant offset */
};

/*
 * Quantize n float elements.  `work` must hold nb floats (the fp32 absmax
 * before double quant); it may be NULL when !double_quant.
 * lq_quantize_ref is the plain scalar reference; lq_quantize is the fast path
 * (vectorized, threads over blocks when nthreads > 1) and produces the same
 * bytes.  Non-finite input is not checked here (see lq_find_nonfinite).
 */
int lq_quantize_ref(const struct lq_qparams *p, const float *x, uint64_t n,
		    struct lq_qbuf *out, float *work);
int lq_quantize(const struct lq_qparams *p, const float *x, uint64_t n,
		struct lq_qbuf *out, float *work, int nthreads);

/*
 * Double-quantize nb fp32 block scales exactly as lq_quantize does with
 * double_quant set (bnb compress_statistics): *offset = mean(absmax), then
 * codes[nb] = 8-bit dynamic-map codes of absmax - offset in blocks of 256,
 * nested[ceil(nb/256)] = their fp32 maxima.  Lets callers quantize a large
 * tensor in chunks without double quant and compress the scales at the end.
 */
void lq_qscales_compress(const float *absmax, uint64_t nb, uint8_t *codes,
			 float *nested, float *offset);

/*
 * Rebuild the fp32 per-block scales of a quantized tensor (double quant
 * undone: code[u8] * nested[b/256] + offset).  absmax must hold nb floats.
 */
void lq_qscales_f32(const struct lq_qparams *p, const struct lq_qbuf *in,
		    uint64_t n, float *absmax);

/* Dequantize n elements to float (reference and fast path, same result). */
int lq_dequantize_ref(const struct lq_qparams *p, const struct lq_qbuf *in,
		      uint64_t n, float *y);
int lq_dequantize(const struct lq_qparams *p, const struct lq_qbuf *in,
		  uint64_t n, float *y, int nthreads);

/* Index of the first NaN/Inf among n elements of a source buffer, or -1. */
int64_t lq_find_nonfinite(const void *src, int dtype, uint64_t n);

/* The code tables (16 floats for NF4/FP4, 256 for the dynamic 8-bit map). */
const float *lq_nf4_table(void);
const float *lq_fp4_table(void);
const float *lq_dynamic_map(void);

/*
 * lq_quantize reading n elements of a source buffer of dtype LQ_DTYPE_F32,
 * _F16 or _BF16 directly (converted block by block in the workers, so no fp32
 * copy of the tensor is needed).  Same bytes as lq_quantize of the converted
 * floats.  LQ_ERR_INVALID for another dtype.  Caller-owned buffers as above.
 */
int lq_quantize_src(const struct lq_qparams *p, const void *src, int dtype, uint64_t n,
		    struct lq_qbuf *out, float *work, int nthreads);

/* ----------------------------------------------------------- safetensors */

/* One tensor of a safetensors checkpoint. */
struct lq_st_tensor {
	const char *name;
	int dtype;                 /* enum lq_dtype, or -1 when unsupported */
	const char *dtype_name;    /* as written in the file, e.g. "BF16", "I64" */
	int ndim;
	uint64_t shape[LQ_MAX_DIMS];
	uint64_t nelem;
	uint64_t nbytes;
	const void *data;          /* points into the mmap'ed file */
	int file;                  /* index into lq_st.files */
};

/* An opened checkpoint: one .safetensors file or a sharded set. */
struct lq_st;

/*
 * Open a checkpoint: a .safetensors file, or a directory holding
 * model.safetensors or model.safetensors.index.json (+ shards).  All headers
 * are validated before this returns (bounds, overlap, shape x dtype = size).
 * Tensors of dtypes other than F32/F16/BF16/U8/I8 are listed with dtype -1.
 */
int lq_st_open(struct lq_st **out, const char *path, struct lq_error *err);
void lq_st_close(struct lq_st *st);
size_t lq_st_count(const struct lq_st *st);
const struct lq_st_tensor *lq_st_get(const struct lq_st *st, size_t i);
const struct lq_st_tensor *lq_st_find(const struct lq_st *st, const char *name);
size_t lq_st_nfiles(const struct lq_st *st);
const char *lq_st_file_path(const struct lq_st *st, size_t i);
uint64_t lq_st_file_size(const struct lq_st *st, size_t i);
/* Total size of the tensor data of the checkpoint (for progress). */
uint64_t lq_st_total_bytes(const struct lq_st *st);
/* Advise the kernel that a tensor's pages are about to be read in order
 * (asynchronous read-ahead). */
void lq_st_prefetch(const struct lq_st *st, const struct lq_st_tensor *t);
/* Advise the kernel that a tensor's pages are no longer needed. */
void lq_st_release(const struct lq_st *st, const struct lq_st_tensor *t);

/*
 * Parse one safetensors image in memory (the core of lq_st_open, used by
 * the fuzzer).  `label` names the buffer in error messages.
 */
int lq_st_parse(struct lq_st **out, const void *buf, size_t size,
		const char *label, struct lq_error *err);

/* ------------------------------------------------------------ LQ format */

/* Storage description of one tensor in an LQ file. */
struct lq_tensor {
	const char *name;
	int qtype;               /* enum lq_qtype */
	int src_dtype;           /* enum lq_dtype of the source */
	int block_size;          /* 0 when qtype == NONE */
	int double_quant;
	int ndim;
	uint64_t shape[LQ_MAX_DIMS];
	uint64_t nelem;
	float offset;            /* double-quant offset */
	/* parts: absolute file offsets and sizes; size 0 = absent */
	uint64_t data_off, data_size;
	uint64_t scale_off, scale_size;
	uint64_t nested_off, nested_size;
	uint64_t xxh3;           /* XXH3-64 over data, scales, nested (in order) */
	/* pointers into the mapped file (set by lq_file_open) */
	const uint8_t *data;
	const void *scales;
	const float *nested;
};

/* A file stored in the LQ file (config.json, tokenizer.json, ...). */
struct lq_blob {
	const char *name;
	uint64_t off, size, xxh3;
	const uint8_t *data;
};

struct lq_file;

/* Open and validate an LQ file (header, footer, metadata, index; not the
 * tensor checksums, see lq_file_verify). */
int lq_file_open(struct lq_file **out, const char *path, struct lq_error *err);
/* Same over a memory image (fuzzing, tests). The buffer must outlive the handle. */
int lq_file_parse(struct lq_file **out, const void *buf, size_t size,
		  const char *label, struct lq_error *err);
void lq_file_close(struct lq_file *f);

uint64_t lq_file_size(const struct lq_file *f);
int lq_file_version(const struct lq_file *f);
size_t lq_file_count(const struct lq_file *f);
const struct lq_tensor *lq_file_get(const struct lq_file *f, size_t i);
const struct lq_tensor *lq_file_find(const struct lq_file *f, const char *name);
size_t lq_file_nblobs(const struct lq_file *f);
const struct lq_blob *lq_file_blob(const struct lq_file *f, size_t i);
const struct lq_blob *lq_file_find_blob(const struct lq_file *f, const char *name);
/* The metadata JSON text (NUL-terminated) and its length. */
const char *lq_file_metadata(const struct lq_file *f, size_t *len);

/* Recompute one tensor's checksum: LQ_OK or LQ_ERR_CHECKSUM. */
int lq_tensor_verify(const struct lq_tensor *t, struct lq_error *err);
int lq_blob_verify(const struct lq_blob *b, struct lq_error *err);

/* qparams of a stored tensor */
void lq_tensor_qparams(const struct lq_tensor *t, struct lq_qparams *p);
/* qbuf view of a stored tensor (pointers into the file) */
void lq_tensor_qbuf(const struct lq_tensor *t, struct lq_qbuf *b);
/* Dequantize/convert a stored tensor to float32 (y holds nelem floats). */
int lq_tensor_to_f32(const struct lq_tensor *t, float *y, int nthreads,
		     struct lq_error *err);

/* --------------------------------------------------------- LQ writing */

/*
 * Sequential writer: writes to a file descriptor in one pass (so `-o -`
 * works on a pipe).  Blobs first, then tensors, then metadata, index and
 * footer.  The caller opens/renames the file; the writer only writes.
 */
struct lq_writer;

int lq_writer_create(struct lq_writer **out, int fd, const char *label,
		     struct lq_error *err);
/* Store a named file (copied into the LQ file before the tensors). */
int lq_writer_add_blob(struct lq_writer *w, const char *name, const void *data,
		       size_t size, struct lq_error *err);
/* Store one tensor.  Parts are written as given (sizes must fit the qparams). */
int lq_writer_add_tensor(struct lq_writer *w, const struct lq_tensor *desc,
			 const void *data, const void *scales, const float *nested,
			 struct lq_error *err);
/* Finish: metadata JSON (any valid JSON object text), index and footer. */
int lq_writer_finish(struct lq_writer *w, const char *metadata_json,
		     struct lq_error *err);
/* Bytes written so far. */
uint64_t lq_writer_offset(const struct lq_writer *w);
void lq_writer_free(struct lq_writer *w);

/* ------------------------------------------- checkpoint -> LQ (quantize) */

/* Options of lq_pack.  Zero-initialize, then set; lq_pack_opts_init gives
 * the defaults of BitsAndBytesConfig(load_in_4bit, nf4, double quant, bf16). */
struct lq_pack_opts {
	int qtype;             /* default LQ_QTYPE_NF4; LQ_QTYPE_NONE stores all as is */
	int block_size;        /* default 64 */
	int double_quant;      /* default 1 */
	int compute;           /* enum lq_compute recorded for run; default bf16 */
	const char *const *keep;     /* globs (fnmatch) of tensors kept as stored */
	size_t nkeep;
	const char *const *quantize; /* globs of tensors quantized in any case */
	size_t nquantize;
	int quantize_head;     /* quantize lm_head too */
	int allow_nonfinite;   /* accept NaN/Inf in weights */
	int nthreads;          /* worker threads (>= 1) */
	/* progress: called after each piece of work; return nonzero to cancel */
	int (*progress)(void *ctx, uint64_t done, uint64_t total, const char *tensor);
	/* warnings (e.g. "no tokenizer.json"): one line, no newline */
	void (*warn)(void *ctx, const char *msg);
	void *ctx;
};

void lq_pack_opts_init(struct lq_pack_opts *o);

/*
 * The storage type a tensor gets under the options: Linear weights (2-D
 * ".weight" tensors other than embeddings, norms and lm_head) get o->qtype;
 * --keep globs win over --quantize globs, which win over that rule.  Only
 * F32/F16/BF16 tensors are ever quantized.
 */
int lq_pack_choose(const struct lq_pack_opts *o, const char *name, int ndim, int dtype);

/*
 * Set the storage of every parameter of a model description (lq_model.h) as
 * lq_pack will store it under the options: --keep, then --quantize, then
 * the architecture's own rule (every Linear weight but lm_head, unless
 * quantize_head).  Used by lq_pack and for estimates (inspect --estimate).
 */
struct lq_model;
int lq_pack_plan(const struct lq_pack_opts *o, struct lq_model *m, struct lq_error *err);

/* Name of the stored file holding the tokenizer as lq_tokenizer_serialize
 * writes it (loaded with lq_tokenizer_load_blob, no JSON parsing). */
#define LQ_TOKENIZER_BLOB "tokenizer.lqtok"

/*
 * What lq_pack would store beside the tensors of the checkpoint directory
 * `dir` (opened as st) under the options: the stored files and their sizes
 * (the precompiled tokenizer included; names are static strings; at most
 * cap entries, *n set) and the size of the metadata JSON, so that
 * lq_model_estimate_lq (lq_model.h) gives the exact size of the .lq file.
 */
struct lq_estimate_blob;
int lq_pack_stored(const char *dir, const struct lq_pack_opts *o, const struct lq_st *st,
		   struct lq_estimate_blob *blobs, size_t cap, size_t *n, uint64_t *metadata_bytes,
		   struct lq_error *err);

/*
 * Quantize the checkpoint at `input` (a directory with config.json and
 * model.safetensors[.index.json], or a bare .safetensors file) and write
 * the LQ file to fd in one sequential pass.  Memory does not grow with the
 * model: tensors are processed in chunks from the mmap'ed input.
 */
int lq_pack(const char *input, int fd, const char *out_label,
	    const struct lq_pack_opts *o, struct lq_error *err);

/* ------------------------------------------------------------- .npy */

/* Write a float32 C-order .npy file image to fd. */
int lq_npy_write_f32(int fd, const float *x, int ndim, const uint64_t *shape,
		     const char *label, struct lq_error *err);

/* -------------------------------------------------------------- hash */

uint64_t lq_xxh3(const void *p, size_t n);

#ifdef __cplusplus
}
#endif

#include "lq_model.h"     /* architecture descriptions, module tree, footprint */
#include "lq_tokenizer.h" /* Hugging Face tokenizers */
#include "lq_template.h"  /* chat templates (Jinja subset) */
#include "lq_hub.h"       /* Hugging Face Hub downloads and cache */
#include "lq_run.h"       /* CPU runtime: forward pass, matmuls, sampler */

#endif /* LIBQUANT_H */
