"""The Linear Recurrent Unit (Orvieto et al. 2023, "Resurrecting recurrent neural networks for
long sequences"), one layer = the paper's LRU followed by its position-wise GLU block:

    x_t = lambda * x_{t-1} + gamma * (B u_t)        (complex, diagonal: N units)
    y_t = Re(C x_t) + D * u_t                        (real, hidden_size wide)
    out_t = u_t + GLU(GELU(y_t)),  GLU(z) = a * sigmoid(g), [a, g] = W z + c

with lambda = exp(-exp(nu_log) + i exp(theta_log)), so |lambda| = exp(-exp(nu_log)) < 1 for
every value of the parameters, and gamma = exp(gamma_log). Initialisation as in the paper's
appendix code: |lambda|^2 ~ U[r_min^2, r_max^2] (the ring), arg lambda ~ U[0, max_phase],
gamma_log = log sqrt(1 - |lambda|^2), B ~ N(0, 1 / 2H) and C ~ N(0, 1 / N) in each of the real
and imaginary parts, D ~ N(0, 1). Complex quantities are stored as real parameters (their real
and imaginary parts, or their logarithms), so ``.double()`` casts every one of them.

u_t is the layer's input when it is hidden_size wide; a layer whose input width differs (the
first one, fed by the embedding) first maps it by a Linear(input_size, hidden_size) (the
paper's linear encoder), so that D * u_t and the residual are always defined. The paper's
normalisation before the LRU and its dropout are left out.

The state is the complex x_t, (B, N): gradient flow logs ||dL/dx_k|| as the norm over its real
and imaginary parts, and per-timestep clipping clips that norm. The fast path is a chunked
parallel scan of the linear recurrence (``chunked_scan``); the unrolled path steps it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bpttlab import checks
from bpttlab.cells.base import Cell, LayerState, StepStates, register


def chunk_length(steps: int) -> int:
    """The divisor of ``steps`` closest below sqrt(steps), down to sqrt(steps) / 2; else
    floor(sqrt(steps)) (the last, partial chunk then runs step by step)."""
    root = math.isqrt(steps)
    return next((k for k in range(root, root // 2, -1) if steps % k == 0), root)


def chunked_scan(log_lambda: Tensor, b: Tensor, x0: Tensor, chunk: int | None = None) -> Tensor:
    """Every x_t = lambda x_{t-1} + b_t of a diagonal linear recurrence, in about 2 sqrt(T)
    vectorised steps instead of T.

    The sequence is cut into chunks of ``chunk`` steps (default ``chunk_length(T)``). First the
    recurrence runs from a zero state inside every chunk at once (``chunk`` steps over all
    chunks together); then the true state before each chunk is carried from chunk to chunk
    (T / chunk steps); finally every state adds its chunk's carried-in state times
    lambda^(j+1), j the step within the chunk. Steps left over after the last whole chunk run
    one by one. Powers are exp(k log lambda), 1 <= k <= chunk: no negative powers, so nothing
    overflows when |lambda| is small, and powers that underflow are zero to working precision.

    It does the step loop's T x B x N multiply-adds in about 2 sqrt(T) vectorised steps, which
    pays where the cost per step dominates (accelerators, small batches). On a 2-core CPU at
    B = 64, N = 128 it measured 1.2x (T = 1000) to 1.7x (T = 2048) slower than the step loop,
    and a log2(T)-step Hillis-Steele scan 14-25x slower (``scripts/bench_lru_scan.py``).

    Args:
        log_lambda: (N,) complex log of the eigenvalues.
        b: (B, T, N) complex inputs.
        x0: (B, N) complex state before the first step.

    Returns:
        (B, T, N) complex states.
    """
    batch, steps, n = b.shape
    chunk = chunk or chunk_length(steps)
    chunks = steps // chunk
    lam = torch.exp(log_lambda)
    inner, partial = [], b.new_zeros(batch, chunks, n)
    for b_j in b[:, : chunks * chunk].reshape(batch, chunks, chunk, n).unbind(2):
        partial = lam * partial + b_j  # inside every chunk at once, from a zero state
        inner.append(partial)
    k = torch.arange(1, chunk + 1, dtype=log_lambda.real.dtype, device=b.device)
    powers = torch.exp(k[:, None] * log_lambda)  # lambda^(j+1), (chunk, N)
    carried, state = [], x0
    for last in partial.unbind(1):  # each chunk's last state from zero
        carried.append(state)
        state = last + powers[-1] * state
    states = torch.stack(inner, 2) + powers * torch.stack(carried, 1)[:, :, None]
    states = states.reshape(batch, chunks * chunk, n)
    if chunks * chunk == steps:
        return states
    tail = []
    for b_t in b[:, chunks * chunk :].unbind(1):
        state = lam * state + b_t
        tail.append(state)
    return torch.cat([states, torch.stack(tail, 1)], 1)


@register("lru")
class LRUCell(Cell):
    """LRU + GELU/GLU block with a residual (see the module docstring).

    Args:
        state_size: N, complex units of the recurrence; None: hidden_size.
        r_min, r_max: the ring 0 <= r_min < |lambda| < r_max < 1 at initialisation.
        max_phase: arg lambda ~ U[0, max_phase] at initialisation.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        t_max: int | None = None,
        state_size: int | None = None,
        r_min: float = 0.9,
        r_max: float = 0.999,
        max_phase: float = 2 * math.pi,
    ):
        super().__init__(input_size, hidden_size, t_max)
        n = checks.integer("state_size", state_size, 1, optional=True) or hidden_size
        for key, value in (("r_min", r_min), ("r_max", r_max)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
                raise checks.ConfigError(key, value, "a number in [0, 1)")
        if r_min >= r_max:
            raise checks.ConfigError("r_min", r_min, f"a number below r_max={r_max}")
        checks.positive("max_phase", max_phase)
        self.state_size = n
        self.encoder = nn.Linear(input_size, hidden_size) if input_size != hidden_size else None
        H = hidden_size
        tiny = torch.finfo(torch.float32).tiny  # a draw of exactly 0 would give log(0)
        modulus_squared = torch.empty(n).uniform_(r_min**2, r_max**2).clamp(min=tiny)
        self.nu_log = nn.Parameter(torch.log(-0.5 * torch.log(modulus_squared)))
        phase = torch.empty(n).uniform_(0, max_phase).clamp(min=tiny)
        self.theta_log = nn.Parameter(torch.log(phase))
        self.gamma_log = nn.Parameter(0.5 * torch.log(1 - modulus_squared))
        self.B_re = nn.Parameter(torch.randn(n, H) / math.sqrt(2 * H))
        self.B_im = nn.Parameter(torch.randn(n, H) / math.sqrt(2 * H))
        self.C_re = nn.Parameter(torch.randn(H, n) / math.sqrt(n))
        self.C_im = nn.Parameter(torch.randn(H, n) / math.sqrt(n))
        self.D = nn.Parameter(torch.randn(H))
        self.glu = nn.Linear(H, 2 * H)

    def log_lambda(self) -> Tensor:
        """log lambda = -exp(nu_log) + i exp(theta_log), (N,) complex."""
        return torch.complex(-torch.exp(self.nu_log), torch.exp(self.theta_log))

    def default_state(self, like: Tensor) -> LayerState:
        zeros = like.new_zeros(like.shape[0], self.state_size)
        return (torch.complex(zeros, zeros),)

    def forward(self, x: Tensor, state: LayerState) -> tuple[Tensor, LayerState]:
        u, b = self._inputs(x)
        states = chunked_scan(self.log_lambda(), b, state[0])
        return self._outputs(u, states), (states[:, -1],)

    def unrolled(self, x: Tensor, state: LayerState) -> tuple[Tensor, LayerState, StepStates]:
        u, b = self._inputs(x)
        lam = torch.exp(self.log_lambda())
        (h,) = state
        hs = []
        for b_t in b.unbind(1):
            h = lam * h + b_t
            hs.append(h)
        return self._outputs(u, torch.stack(hs, dim=1)), (h,), {"h": hs}

    def _inputs(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """u (B, T, H) and the complex inputs gamma * (B u) (B, T, N) of every step, in one
        matrix product."""
        u = x if self.encoder is None else self.encoder(x)
        gamma = torch.exp(self.gamma_log)[:, None]
        b_re, b_im = F.linear(u, torch.cat([self.B_re * gamma, self.B_im * gamma])).chunk(2, -1)
        return u, torch.complex(b_re, b_im)

    def _outputs(self, u: Tensor, states: Tensor) -> Tensor:
        """u + GLU(GELU(Re(C x) + D u)), with Re(C x) as one real matrix product over the
        interleaved real and imaginary parts of x."""
        c = torch.stack([self.C_re, -self.C_im], dim=-1).flatten(-2)  # (H, 2N)
        y = F.linear(torch.view_as_real(states).flatten(-2), c) + self.D * u
        a, g = self.glu(F.gelu(y)).chunk(2, -1)
        return u + a * torch.sigmoid(g)
