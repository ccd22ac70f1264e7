/* lq_tokenizer.h - part of the public API, included by libquant.h. */
#ifndef LQ_TOKENIZER_H
#define LQ_TOKENIZER_H

#endif
