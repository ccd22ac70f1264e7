/* lq_template.h - part of the public API, included by libquant.h. */
#ifndef LQ_TEMPLATE_H
#define LQ_TEMPLATE_H

#endif
