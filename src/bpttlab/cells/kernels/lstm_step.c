/* The step loops of bpttlab's LSTM kernel, forward and backward (kernels/lstm.py runs the
 * GEMMs over all timesteps and explains the layout). float32, contiguous, time-major buffers;
 * each step's gate rows hold the blocks o, i, f, g, the g rows doubled so that one sigmoid
 * covers every gate (tanh(g) = 2 sigmoid(2 g) - 1). Each step is one GEMM, by the BLAS torch
 * runs its own on (its address in `gemm`), and one pass over each row for the element-wise
 * work that costs a dozen torch operations otherwise. */

#include "step_loops.h"

typedef struct {
    float *gates;      /* (T, B, 4H): pre-activations in; sigmoid(o, i, f) and tanh(g) out */
    float *cs;         /* (T + 1, B, H): cell states, cs[0] given */
    float *hs;         /* (T + 1, B, H): hidden states, hs[0] given */
    float *squashed;   /* (T, B, H): tanh(c_t) */
    float *grad_gates; /* (T, B, 4H): dL/d(pre-activation), backward only */
    float *grad_h;     /* (B, H): dL/dh_t at the step being run back through */
    float *grad_c;     /* (B, H): dL/dc carried back, updated in place */
    const float *grad_y; /* (B, T, H): dL/dy from above, backward only */
    float *sink_h;     /* (T, B, H) or NULL: receives dL/dh_t */
    float *sink_c;     /* (T, B, H) or NULL: receives dL/dc_t */
    const float *weights; /* (4H, H): W_hh, rows o, i, f, g (g doubled in the forward) */
    long batch, hidden, steps;
    sgemm_fn *gemm;
} lstm_buffers;

HANDSHAKE(lstm_buffers,
          FIELD(lstm_buffers, gates), FIELD(lstm_buffers, cs), FIELD(lstm_buffers, hs),
          FIELD(lstm_buffers, squashed), FIELD(lstm_buffers, grad_gates),
          FIELD(lstm_buffers, grad_h), FIELD(lstm_buffers, grad_c), FIELD(lstm_buffers, grad_y),
          FIELD(lstm_buffers, sink_h), FIELD(lstm_buffers, sink_c), FIELD(lstm_buffers, weights),
          FIELD(lstm_buffers, batch), FIELD(lstm_buffers, hidden), FIELD(lstm_buffers, steps),
          FIELD(lstm_buffers, gemm))

static void forward_row(float *restrict gate, const float *restrict c_prev, float *restrict c,
                        float *restrict h, float *restrict squashed, long H) {
    for (long j = 0; j < 4 * H; j++) gate[j] = 1.0f / (1.0f + expf(-gate[j]));
    for (long j = 0; j < H; j++) {
        float cell = 2.0f * gate[3 * H + j] - 1.0f;
        float c_j = gate[2 * H + j] * c_prev[j] + gate[H + j] * cell;
        float tanh_c = 2.0f / (1.0f + expf(-2.0f * c_j)) - 1.0f;
        gate[3 * H + j] = cell;
        c[j] = c_j;
        squashed[j] = tanh_c;
        h[j] = gate[j] * tanh_c;
    }
}

static inline void backward_row(const float *restrict gate, float *restrict grad_gate,
                                const float *restrict c_prev, const float *restrict squashed,
                                const float *restrict grad_h, float *restrict grad_c,
                                float *restrict sink_c, long H, const int has_sink) {
    for (long j = 0; j < H; j++) {
        float o = gate[j], i = gate[H + j], f = gate[2 * H + j], cell = gate[3 * H + j];
        float grad_h_squashed = grad_h[j] * squashed[j];
        float grad_c_j = grad_c[j] + (grad_h[j] - grad_h_squashed * squashed[j]) * o;
        grad_gate[j] = (o - o * o) * grad_h_squashed;
        grad_gate[H + j] = (i - i * i) * cell * grad_c_j;
        grad_gate[2 * H + j] = (f - f * f) * c_prev[j] * grad_c_j;
        grad_gate[3 * H + j] = (1.0f - cell * cell) * i * grad_c_j;
        grad_c[j] = grad_c_j * f;
        if (has_sink) sink_c[j] = grad_c_j;
    }
}

/* Step t forward: the gate rows of step t already hold W x_t + b + W_hh h_t. */
static void forward_step(const lstm_buffers *s, long t) {
    const long B = s->batch, H = s->hidden;
    for (long b = 0; b < B; b++) {
        const long row = t * B + b;
        forward_row(s->gates + row * 4 * H, s->cs + row * H, s->cs + (row + B) * H,
                    s->hs + (row + B) * H, s->squashed + row * H, H);
    }
}

/* Step t backward: grad_h holds dL/dh_t; writes step t's gate gradients, carries grad_c to
 * dL/dc_{t-1} (its part through c) and fills the sinks' step t. */
static void backward_step(const lstm_buffers *s, long t) {
    const long B = s->batch, H = s->hidden;
    for (long b = 0; b < B; b++) {
        const long row = t * B + b;
        const float *gate = s->gates + row * 4 * H, *c_prev = s->cs + row * H;
        const float *squashed = s->squashed + row * H, *grad_h = s->grad_h + b * H;
        float *grad_gate = s->grad_gates + row * 4 * H, *grad_c = s->grad_c + b * H;
        if (s->sink_h)
            for (long j = 0; j < H; j++) s->sink_h[row * H + j] = grad_h[j];
        if (s->sink_c)
            backward_row(gate, grad_gate, c_prev, squashed, grad_h, grad_c, s->sink_c + row * H,
                         H, 1);
        else
            backward_row(gate, grad_gate, c_prev, squashed, grad_h, grad_c, NULL, H, 0);
    }
}

/* Every step forward: the gate rows hold W x_t + b; each step adds W_hh h_t, then squashes. */
void forward(const lstm_buffers *s) {
    const int B = s->batch, H = s->hidden, H4 = 4 * H;
    const float one = 1.0f;
    for (long t = 0; t < s->steps; t++) {
        /* gates_t (B x 4H) += h_t (B x H) W_hh^T */
        s->gemm("T", "N", &H4, &B, &H, &one, s->weights, &H, s->hs + t * B * H, &H, &one,
                s->gates + t * B * H4, &H4);
        forward_step(s, t);
    }
}

/* Every step backward: grad_h holds dL/dh_T and grad_c dL/dc_T; leaves dL/dh_0 and dL/dc_0
 * in them, and every step's gate gradients in grad_gates. */
void backward(const lstm_buffers *s) {
    const int B = s->batch, H = s->hidden, H4 = 4 * H;
    const long T = s->steps;
    const float one = 1.0f, zero = 0.0f;
    for (long t = T - 1; t >= 0; t--) {
        backward_step(s, t);
        if (t > 0)
            for (long b = 0; b < B; b++)
                for (long j = 0; j < H; j++)
                    s->grad_h[b * H + j] = s->grad_y[(b * T + t - 1) * H + j];
        /* grad_h (B x H) = dL/dy_{t-1} + grad_gates_t (B x 4H) W_hh (4H x H) */
        s->gemm("N", "N", &H, &B, &H4, &one, s->weights, &H, s->grad_gates + t * B * H4, &H4,
                t > 0 ? &one : &zero, s->grad_h, &H);
    }
}
