/* The element-wise work of one Elman RNN timestep, forward and backward, for bpttlab's RNN
 * kernel (kernels/rnn.py, which runs the GEMMs and explains the layout). float32, contiguous,
 * time-major buffers. */

#include <stddef.h>

/* glibc's vector expf (libmvec), declared so the loops below vectorise without -ffast-math */
float expf(float) __attribute__((simd("notinbranch")));

typedef struct {
    float *hs;           /* (T + 1, B, H): h0, then each step's pre-activation, then its state */
    float *grad_pre;     /* (T, B, H): dL/d(pre-activation) */
    float *grad_h;       /* (B, H): dL/dh_t in; dL/dh_{t-1} less its GEMM term out */
    const float *grad_y; /* (B, T, H): dL/dy from above */
    float *sink;         /* (T, B, H) or NULL: receives dL/dh_t */
    long batch, hidden, steps, relu;
} rnn_buffers;

/* Step t forward: row t + 1 of hs already holds W_ih x_t + b + W_hh h_t. */
void forward_step(const rnn_buffers *s, long t) {
    float *restrict h = s->hs + (t + 1) * s->batch * s->hidden;
    const long n = s->batch * s->hidden;
    if (s->relu)
        for (long j = 0; j < n; j++) h[j] = h[j] > 0.0f ? h[j] : 0.0f;
    else
        for (long j = 0; j < n; j++) h[j] = 2.0f / (1.0f + expf(-2.0f * h[j])) - 1.0f;
}

static void backward_row(const float *restrict h, float *restrict grad_pre,
                         float *restrict grad_h, const float *restrict grad_y_prev,
                         float *restrict sink, long H, const int relu) {
    for (long j = 0; j < H; j++) {
        float dh = grad_h[j];
        if (sink) sink[j] = dh;
        grad_pre[j] = dh * (relu ? (h[j] > 0.0f ? 1.0f : 0.0f) : 1.0f - h[j] * h[j]);
        grad_h[j] = grad_y_prev ? grad_y_prev[j] : 0.0f;
    }
}

/* Step t backward: grad_h holds dL/dh_t; writes step t's pre-activation gradient, leaves in
 * grad_h dL/dy_{t-1} (the rest of dL/dh_{t-1} is the GEMM's) and fills the sink's step t. */
void backward_step(const rnn_buffers *s, long t) {
    const long B = s->batch, H = s->hidden, T = s->steps;
    for (long b = 0; b < B; b++) {
        const long row = t * B + b;
        backward_row(s->hs + (row + B) * H, s->grad_pre + row * H, s->grad_h + b * H,
                     t > 0 ? s->grad_y + (b * T + t - 1) * H : NULL,
                     s->sink ? s->sink + row * H : NULL, H, (int)s->relu);
    }
}
