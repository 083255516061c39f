/* What the kernels' step loops (*_step.c) share: the BLAS sgemm they multiply with, and the
 * vector expf their element-wise work uses. */

#include <stddef.h>

/* BLAS sgemm: c = alpha a b + beta c, column-major, a and b transposed or not. A row-major
 * array is the transpose of the column-major one, so each call computes the row-major product
 * written above it as its transpose: (x W^T)^T = W x^T, operands swapped. */
typedef void sgemm_fn(const char *transa, const char *transb, const int *m, const int *n,
                      const int *k, const float *alpha, const float *a, const int *lda,
                      const float *b, const int *ldb, const float *beta, float *c, const int *ldc);

/* glibc's vector expf (libmvec), declared so the loops vectorise without -ffast-math */
float expf(float) __attribute__((simd("notinbranch")));
