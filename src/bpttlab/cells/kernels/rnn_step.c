/* The step loops of bpttlab's Elman RNN kernel, forward and backward (kernels/rnn.py runs the
 * GEMMs over all timesteps and explains the layout). float32, contiguous, time-major buffers.
 * Each step is one GEMM, by the BLAS torch runs its own on (its address in `gemm`), and one
 * pass for the element-wise work. */

#include "step_loops.h"

typedef struct {
    float *hs;           /* (T + 1, B, H): h0, then each step's pre-activation, then its state */
    float *grad_pre;     /* (T, B, H): dL/d(pre-activation) */
    float *grad_h;       /* (B, H): dL/dh_t in; dL/dh_{t-1} less its GEMM term out */
    const float *grad_y; /* (B, T, H): dL/dy from above */
    float *sink;         /* (T, B, H) or NULL: receives dL/dh_t */
    const float *weights; /* (H, H): W_hh */
    long batch, hidden, steps, relu;
    sgemm_fn *gemm;
} rnn_buffers;

HANDSHAKE(rnn_buffers,
          FIELD(rnn_buffers, hs), FIELD(rnn_buffers, grad_pre), FIELD(rnn_buffers, grad_h),
          FIELD(rnn_buffers, grad_y), FIELD(rnn_buffers, sink), FIELD(rnn_buffers, weights),
          FIELD(rnn_buffers, batch), FIELD(rnn_buffers, hidden), FIELD(rnn_buffers, steps),
          FIELD(rnn_buffers, relu), FIELD(rnn_buffers, gemm))

/* Step t forward: row t + 1 of hs already holds W_ih x_t + b + W_hh h_t. */
static void forward_step(const rnn_buffers *s, long t) {
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
static void backward_step(const rnn_buffers *s, long t) {
    const long B = s->batch, H = s->hidden, T = s->steps;
    for (long b = 0; b < B; b++) {
        const long row = t * B + b;
        backward_row(s->hs + (row + B) * H, s->grad_pre + row * H, s->grad_h + b * H,
                     t > 0 ? s->grad_y + (b * T + t - 1) * H : NULL,
                     s->sink ? s->sink + row * H : NULL, H, (int)s->relu);
    }
}

/* Every step forward: row t + 1 of hs holds W_ih x_t + b; each step adds W_hh h_t, then
 * applies the activation. */
void forward(const rnn_buffers *s) {
    const int B = s->batch, H = s->hidden;
    const float one = 1.0f;
    for (long t = 0; t < s->steps; t++) {
        /* h_{t+1} (B x H) += h_t (B x H) W_hh^T */
        s->gemm("T", "N", &H, &B, &H, &one, s->weights, &H, s->hs + t * B * H, &H, &one,
                s->hs + (t + 1) * B * H, &H);
        forward_step(s, t);
    }
}

/* Every step backward: grad_h holds dL/dh_T; leaves dL/dh_0 in it, and every step's
 * pre-activation gradient in grad_pre. */
void backward(const rnn_buffers *s) {
    const int B = s->batch, H = s->hidden;
    const float one = 1.0f;
    for (long t = s->steps - 1; t >= 0; t--) {
        backward_step(s, t);
        /* grad_h (B x H) += grad_pre_t (B x H) W_hh */
        s->gemm("N", "N", &H, &B, &H, &one, s->weights, &H, s->grad_pre + t * B * H, &H, &one,
                s->grad_h, &H);
    }
}
