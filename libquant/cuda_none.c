/*
 * cuda_none.c - what stands in for gpu/ when libquant is built without CUDA
 * (the Makefile defines LQ_HAVE_CUDA and links the gpu/ sources when nvcc is found).
 *
 * Copyright (c) the libquant authors.  MIT license.
 */
#include "libquant.h"

#ifndef LQ_HAVE_CUDA
const struct lq_backend *lq_backend_cuda(void)
{
	return NULL;
}

int lq_gpu_count(void)
{
	return 0;
}
#else
typedef int lq_cuda_none_unused; /* ISO C wants a declaration in every file */
#endif
