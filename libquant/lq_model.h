/* lq_model.h - part of the public API, included by libquant.h. */
#ifndef LQ_MODEL_H
#define LQ_MODEL_H

#endif
