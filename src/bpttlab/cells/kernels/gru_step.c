/* The step loops of bpttlab's GRU kernel, forward and backward (kernels/gru.py runs the GEMMs
 * over all timesteps and explains the layout). float32, contiguous, time-major buffers. Each
 * step is one GEMM, by the BLAS torch runs its own on (its address in `gemm`), and one pass
 * over each row for the element-wise work; the backward computes each step's gate factors
 * from cache-resident rows. */

#include "step_loops.h"
#include <string.h>

typedef struct {
    const float *projected; /* (T, B, 4H): input side of r, z, hn (zero), then W_in x + b_in */
    float *gates;           /* (T, B, 3H): r, z pre-activations + W_h h, then sigmoid(r, z) */
    float *new;             /* (T, B, H): n_t */
    float *hs;              /* (T + 1, B, H): hidden states, hs[0] given */
    float *grad_gates;      /* (T, B, 4H): dL/d(n pre, r pre, z pre, W_hn h + b_hn) */
    float *grad_h;          /* (B, H): dL/dh_t in; dL/dh_{t-1} less its GEMM term out */
    const float *grad_y;    /* (B, T, H): dL/dy from above */
    float *sink;            /* (T, B, H) or NULL: receives dL/dh_t */
    const float *weights;   /* (3H, H): W_hh */
    long batch, hidden, steps;
    sgemm_fn *gemm;
} gru_buffers;

HANDSHAKE(gru_buffers,
          FIELD(gru_buffers, projected), FIELD(gru_buffers, gates), FIELD(gru_buffers, new),
          FIELD(gru_buffers, hs), FIELD(gru_buffers, grad_gates), FIELD(gru_buffers, grad_h),
          FIELD(gru_buffers, grad_y), FIELD(gru_buffers, sink), FIELD(gru_buffers, weights),
          FIELD(gru_buffers, batch), FIELD(gru_buffers, hidden), FIELD(gru_buffers, steps),
          FIELD(gru_buffers, gemm))

static void forward_row(float *restrict gate, const float *restrict new_input,
                        float *restrict n, const float *restrict h, float *restrict h_next,
                        long H) {
    for (long j = 0; j < 2 * H; j++) gate[j] = 1.0f / (1.0f + expf(-gate[j]));
    for (long j = 0; j < H; j++) {
        float reset = gate[j], update = gate[H + j], hidden_new = gate[2 * H + j];
        float n_j = 2.0f / (1.0f + expf(-2.0f * (new_input[j] + reset * hidden_new))) - 1.0f;
        n[j] = n_j;
        h_next[j] = (h[j] - n_j) * update + n_j;
    }
}

static void backward_row(const float *restrict gate, const float *restrict n,
                         const float *restrict h, float *restrict grad_gate,
                         float *restrict grad_h, const float *restrict grad_y_prev, long H) {
    for (long j = 0; j < H; j++) {
        float reset = gate[j], update = gate[H + j], hidden_new = gate[2 * H + j];
        float keep = 1.0f - update, dh = grad_h[j];
        float grad_new = dh * (keep - keep * n[j] * n[j]);
        float grad_hidden_new = grad_new * reset;
        float scaled = grad_hidden_new * hidden_new;
        grad_gate[j] = grad_new;
        grad_gate[H + j] = scaled - scaled * reset;
        grad_gate[2 * H + j] = dh * ((h[j] - n[j]) * update * keep);
        grad_gate[3 * H + j] = grad_hidden_new;
        grad_h[j] = (grad_y_prev ? grad_y_prev[j] : 0.0f) + dh * update;
    }
}

/* Step t forward: the gate rows of step t already hold the input side + W_hh h_t + b_hh. */
static void forward_step(const gru_buffers *s, long t) {
    const long B = s->batch, H = s->hidden;
    for (long b = 0; b < B; b++) {
        const long row = t * B + b;
        forward_row(s->gates + row * 3 * H, s->projected + row * 4 * H + 3 * H, s->new + row * H,
                    s->hs + row * H, s->hs + (row + B) * H, H);
    }
}

/* Step t backward: grad_h holds dL/dh_t; writes step t's gate gradients and leaves in grad_h
 * dL/dh_{t-1} without its GEMM term (dL/dy_{t-1} + dL/dh_t z_t), and fills the sink's step t. */
static void backward_step(const gru_buffers *s, long t) {
    const long B = s->batch, H = s->hidden, T = s->steps;
    for (long b = 0; b < B; b++) {
        const long row = t * B + b;
        float *grad_h = s->grad_h + b * H;
        if (s->sink)
            for (long j = 0; j < H; j++) s->sink[row * H + j] = grad_h[j];
        const float *grad_y_prev = t > 0 ? s->grad_y + (b * T + t - 1) * H : NULL;
        backward_row(s->gates + row * 3 * H, s->new + row * H, s->hs + row * H,
                     s->grad_gates + row * 4 * H, grad_h, grad_y_prev, H);
    }
}

/* Every step forward: each step's gate rows are its input side plus W_hh h_t + b_hh. */
void forward(const gru_buffers *s) {
    const int B = s->batch, H = s->hidden, H3 = 3 * H;
    const float one = 1.0f;
    for (long t = 0; t < s->steps; t++) {
        float *gates = s->gates + t * B * H3;
        for (long b = 0; b < B; b++)
            memcpy(gates + b * H3, s->projected + (t * B + b) * 4 * H, H3 * sizeof(float));
        /* gates_t (B x 3H) += h_t (B x H) W_hh^T */
        s->gemm("T", "N", &H3, &B, &H, &one, s->weights, &H, s->hs + t * B * H, &H, &one, gates,
                &H3);
        forward_step(s, t);
    }
}

/* Every step backward: grad_h holds dL/dh_T; leaves dL/dh_0 in it, and every step's gate
 * gradients in grad_gates. */
void backward(const gru_buffers *s) {
    const int B = s->batch, H = s->hidden, H3 = 3 * H, H4 = 4 * H;
    const float one = 1.0f;
    for (long t = s->steps - 1; t >= 0; t--) {
        backward_step(s, t);
        /* grad_h (B x H) += the hidden side of grad_gates_t (B x 3H, rows 4H apart) W_hh */
        s->gemm("N", "N", &H, &B, &H3, &one, s->weights, &H, s->grad_gates + t * B * H4 + H, &H4,
                &one, s->grad_h, &H);
    }
}
