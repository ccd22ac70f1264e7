/* lq_hub.h - part of the public API, included by libquant.h. */
#ifndef LQ_HUB_H
#define LQ_HUB_H

#endif
