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

/* The handshake the Python side (compiled.py) reads before a library's first call: the version
 * of the buffers' meaning, then sizeof the buffers struct, its number of fields and each field's
 * offset and size, in the order of the ctypes Structure that fills it. layout(out, capacity)
 * writes at most `capacity` of them into `out` and returns how many it has. */
#define STEP_LOOPS_VERSION 1
#define FIELD(type, name) (long)offsetof(type, name), (long)sizeof(((type *)0)->name)
#define HANDSHAKE(type, ...)                                                                \
    static const long fields_[] = {__VA_ARGS__};                                            \
    long layout(long *out, long capacity) {                                                 \
        const long count = (long)(sizeof fields_ / sizeof *fields_);                        \
        const long head[] = {STEP_LOOPS_VERSION, (long)sizeof(type), count / 2};            \
        for (long i = 0; i < 3 + count && i < capacity; i++)                                \
            out[i] = i < 3 ? head[i] : fields_[i - 3];                                      \
        return 3 + count;                                                                   \
    }
