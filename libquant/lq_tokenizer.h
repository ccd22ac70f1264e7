/*
 * lq_tokenizer.h - Hugging Face tokenizers in C (part of the public API,
 * included by libquant.h).
 *
 * Loads a `tokenizer.json` (BPE models: byte-level like Llama 3 / Qwen2,
 * SentencePiece-style with byte fallback like Llama 2 / Mistral / Gemma) and
 * encodes and decodes exactly as the Python `tokenizers` library does with
 * that file (which is what transformers' `tokenizer(text)` and
 * `tokenizer.decode(ids)` call).  A loaded tokenizer can be written to a
 * compact binary blob (formats/TOKENIZER-BLOB.md) that loads again without
 * any JSON parsing.
 *
 * Supported: model BPE (byte_fallback, fuse_unk, ignore_merges, unk_token);
 * normalizers NFC, NFD, NFKC, NFKD, Prepend, Replace (string or regex),
 * Lowercase, Strip, Sequence; pre-tokenizers Split (regex via PCRE2 with UTF
 * and UCP, or string; every behavior, invert), ByteLevel, Metaspace,
 * Whitespace, WhitespaceSplit, Digits, Punctuation, BertPreTokenizer,
 * Sequence; added tokens with lstrip/rstrip/single_word/normalized/special;
 * post-processors TemplateProcessing (single), ByteLevel, RobertaProcessing,
 * BertProcessing, Sequence; decoders ByteLevel, ByteFallback, Fuse, Strip,
 * Replace (string), Metaspace, Sequence.  Anything else (WordPiece or Unigram
 * models, BPE dropout, Precompiled normalizers ...) fails to load with
 * LQ_ERR_UNSUPPORTED naming it.  The truncation and padding settings of
 * tokenizer.json are ignored, as transformers' tokenizer(text) does.
 *
 * Text is UTF-8.  Invalid UTF-8 in the input of encode is replaced by U+FFFD
 * per maximal invalid subpart (as Python's bytes.decode(errors="replace")),
 * which is the string Python would hand to the tokenizer.
 *
 * A loaded tokenizer is immutable: encode/decode may be called from several
 * threads at once on the same handle.
 */
#ifndef LQ_TOKENIZER_H
#define LQ_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct lq_error;
struct lq_tokenizer;

/* encode flags */
#define LQ_ENCODE_ADD_SPECIAL 1   /* add BOS etc. as the post-processor says
				   * (transformers' add_special_tokens=True) */
#define LQ_ENCODE_SPLIT_SPECIAL 2 /* do not match special added tokens in the
				   * text (transformers' split_special_tokens) */

/* decode flags */
#define LQ_DECODE_SKIP_SPECIAL 1  /* drop special tokens (skip_special_tokens) */
#define LQ_DECODE_CLEANUP 2       /* transformers 4.x clean_up_tokenization
				   * (" ." -> "." ...); transformers 5 ignores it
				   * for BPE tokenizers, so callers normally leave
				   * it off (see lq_tokenizer_cleanup_config) */

/*
 * Load a tokenizer from the text of tokenizer.json (json, json_len bytes, no
 * NUL needed) and optionally tokenizer_config.json (config may be NULL),
 * which supplies bos/eos/pad/unk tokens and clean_up_tokenization_spaces.
 * As transformers does, the config's named special tokens (bos_token ...
 * mask_token, additional_special_tokens, extra_special_tokens) become special
 * added tokens, and add_bos_token/add_eos_token, when present, decide the
 * BOS/EOS the encoder adds.
 * Components the library does not implement fail with LQ_ERR_UNSUPPORTED
 * naming the component, never with a silently different tokenization.
 * On success *out is a new handle (free with lq_tokenizer_free).
 */
int lq_tokenizer_load_json(struct lq_tokenizer **out, const char *json, size_t json_len,
			   const char *config, size_t config_len, struct lq_error *err);

/*
 * Same, with flags:
 * LQ_TOKENIZER_TRANSFORMERS5: for tokenizer_class LlamaTokenizer (Llama 2,
 *   Mistral, Phi-3 ...) use the pipeline transformers 5 builds for that class
 *   instead of the one in tokenizer.json (Metaspace pre-tokenizer that does
 *   not prepend a second "▁" to a text that starts with a space, template
 *   from add_bos_token/add_eos_token).  Without it the tokenizer follows
 *   tokenizer.json as the `tokenizers` library (and transformers 4, and
 *   SentencePiece) do.  The two differ only for texts with a leading space
 *   or a space right after a special token.
 */
#define LQ_TOKENIZER_TRANSFORMERS5 1
int lq_tokenizer_load_json_ex(struct lq_tokenizer **out, const char *json, size_t json_len,
			      const char *config, size_t config_len, int flags,
			      struct lq_error *err);

/*
 * Convenience: read tokenizer.json from json_path and, when config_path is not
 * NULL and the file exists, tokenizer_config.json, then lq_tokenizer_load_json_ex.
 * A missing tokenizer.json is LQ_ERR_NOTFOUND.
 */
int lq_tokenizer_load_files(struct lq_tokenizer **out, const char *json_path,
			    const char *config_path, int flags, struct lq_error *err);

/*
 * Load a tokenizer from a blob made by lq_tokenizer_serialize.  The blob is
 * treated as hostile (every size and index is checked).  The buffer is only
 * read during the call; the handle does not keep pointers into it.
 */
int lq_tokenizer_load_blob(struct lq_tokenizer **out, const void *blob, size_t len,
			   struct lq_error *err);

/*
 * Serialize a loaded tokenizer.  *buf is a new malloc'ed buffer of *len
 * bytes that the caller frees with free().  The output is deterministic.
 */
int lq_tokenizer_serialize(const struct lq_tokenizer *tok, void **buf, size_t *len,
			   struct lq_error *err);

/* Release a tokenizer; NULL is allowed. */
void lq_tokenizer_free(struct lq_tokenizer *tok);

/*
 * Encode len bytes of UTF-8 text.  flags: LQ_ENCODE_*.  On success *ids is a
 * new malloc'ed array of *n token ids (possibly *n = 0 with *ids non-NULL)
 * that the caller frees with free().
 */
int lq_tokenizer_encode(const struct lq_tokenizer *tok, const char *text, size_t len,
			int flags, int32_t **ids, size_t *n, struct lq_error *err);

/*
 * Decode n ids to text as tokenizers' decode(ids, skip_special_tokens) does.
 * Unknown ids are skipped (as tokenizers does).  flags: LQ_DECODE_*.  On
 * success *text is a new malloc'ed NUL-terminated UTF-8 string of *len bytes
 * (len may be NULL) that the caller frees with free().
 */
int lq_tokenizer_decode(const struct lq_tokenizer *tok, const int32_t *ids, size_t n,
			int flags, char **text, size_t *len, struct lq_error *err);

/*
 * Streaming decode: the raw bytes one token contributes to the output (byte
 * level tokens give their bytes, "<0xNN>" byte-fallback tokens give the byte,
 * the metaspace "▁" gives a space).  Bytes of one character may be split over
 * several tokens: the caller joins them and prints only complete UTF-8.
 * With first != 0 the leading space the decoder strips from the start of a
 * text (Strip / Metaspace decoders) is stripped here as well; a tokenizer
 * without a decoder joins tokens with spaces, so its pieces after the first
 * start with one.
 * Writes at most cap bytes to buf and sets *len to the full length (call
 * again with a larger buffer if *len > cap).  Returns LQ_ERR_NOTFOUND for an
 * id that has no token.  Special tokens give their text.
 */
int lq_tokenizer_token_bytes(const struct lq_tokenizer *tok, int32_t id, int first,
			     char *buf, size_t cap, size_t *len);

/* Number of ids (highest id + 1, including added tokens). */
size_t lq_tokenizer_vocab_size(const struct lq_tokenizer *tok);

/* Id of a token string (added tokens first, then the model vocabulary), or -1. */
int32_t lq_tokenizer_token_to_id(const struct lq_tokenizer *tok, const char *token, size_t len);

/*
 * The string of a token id (added token content or model vocabulary entry,
 * as written in tokenizer.json, e.g. "Ġthe" or "▁the"), NUL-terminated and
 * owned by the handle, or NULL when the id has no token.  *len may be NULL.
 */
const char *lq_tokenizer_id_to_token(const struct lq_tokenizer *tok, int32_t id, size_t *len);

/* Whether id is a special added token (dropped by LQ_DECODE_SKIP_SPECIAL). */
int lq_tokenizer_is_special(const struct lq_tokenizer *tok, int32_t id);

/*
 * Special ids from tokenizer_config.json (bos_token, eos_token, pad_token,
 * unk_token); without a config the BOS is the first token the post-processor
 * adds and the unk is the model's unk_token.  -1 when there is none.
 */
int32_t lq_tokenizer_bos_id(const struct lq_tokenizer *tok);
int32_t lq_tokenizer_eos_id(const struct lq_tokenizer *tok);
int32_t lq_tokenizer_pad_id(const struct lq_tokenizer *tok);
int32_t lq_tokenizer_unk_id(const struct lq_tokenizer *tok);

/* clean_up_tokenization_spaces as written in tokenizer_config.json (0 if absent). */
int lq_tokenizer_cleanup_config(const struct lq_tokenizer *tok);

#ifdef __cplusplus
}
#endif

#endif
