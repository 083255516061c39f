"""The orthogonal RNN of expRNN (Lezcano-Casado & Martinez-Rubio 2019):
h_t = modReLU(W_hh h_{t-1} + W_ih x_t, b), modReLU(z, b) = sign(z) relu(|z| + b), with
W_hh = exp(A) for a skew-symmetric A, so that W_hh is orthogonal at every step of training.

As in the paper's reference code, the input map has no bias (modReLU's b is the layer's bias),
W_ih is Kaiming-normal (relu gain) and b ~ U[-0.01, 0.01]. W_hh is torch's
``parametrizations.orthogonal`` with the matrix exponential and no trivialisation: the
parameter is A itself (A = L - L^T for the strictly lower triangle L of the stored matrix),
initialised as the paper's block-diagonal skew matrices.

No parallel form exists for a nonlinear recurrence: both paths run the same step loop, with
W_hh computed once per call (one matrix exponential per optimiser step, not per timestep) and
every input term W_ih x_t in one matrix product before the loop.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrizations

from bpttlab import checks
from bpttlab.cells.base import Cell, LayerState, StepStates, register

INITS = ("henaff", "cayley", "random")


def modrelu(z: Tensor, bias: Tensor) -> Tensor:
    """sign(z) relu(|z| + bias): a ReLU on the modulus that keeps the sign."""
    return torch.sign(z) * F.relu(z.abs() + bias)


def skew_angles(init: str, size: int) -> Tensor:
    """The angles of the 2 x 2 blocks [[0, -a], [a, 0]] on the diagonal of A (size // 2 of
    them; an odd last unit gets none): henaff draws a ~ U[-pi, pi] (Henaff et al. 2016);
    cayley draws a = -sqrt((1 - cos s) / (1 + cos s)), s ~ U[0, pi / 2] (Helfrich et al.
    2018), both as in expRNN's initialization.py."""
    blocks = size // 2
    if init == "henaff":
        return torch.empty(blocks).uniform_(-math.pi, math.pi)
    s = torch.empty(blocks).uniform_(0.0, math.pi / 2)
    return -torch.sqrt((1 - torch.cos(s)) / (1 + torch.cos(s)))


def haar_skew(size: int) -> Tensor:
    """A skew-symmetric A with exp(A) Haar-distributed on SO(size): the real logarithm of a
    random rotation, through its eigendecomposition (expRNN's haar_init_)."""
    q = torch.linalg.qr(torch.randn(size, size, dtype=torch.float64))[0]
    if torch.det(q) < 0:
        q[0] = -q[0]
    values, vectors = torch.linalg.eig(q)
    log = vectors @ torch.diag(1j * values.angle()) @ torch.linalg.inv(vectors)
    return 0.5 * (log.real - log.real.T)


@register("orthogonal")
class OrthogonalCell(Cell):
    """expRNN with modReLU.

    Args:
        init: the skew-symmetric A at initialisation: ``henaff`` (block rotations with angles
            U[-pi, pi]), ``cayley`` (the scoRNN blocks) or ``random`` (exp(A) Haar on SO(n)).
        recurrent_lr: learning rate of A (its own optimiser group), or None for the
            optimiser's lr.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        t_max: int | None = None,
        init: str = "henaff",
        recurrent_lr: float | None = None,
    ):
        super().__init__(input_size, hidden_size, t_max)
        self.init = checks.choice("init", init, INITS)
        self.recurrent_lr = (
            None if recurrent_lr is None else checks.positive("recurrent_lr", recurrent_lr)
        )
        self.input = nn.Linear(input_size, hidden_size, bias=False)
        nn.init.kaiming_normal_(self.input.weight, nonlinearity="relu")
        self.recurrent = nn.Linear(hidden_size, hidden_size, bias=False)
        parametrizations.orthogonal(
            self.recurrent, orthogonal_map="matrix_exp", use_trivialization=False
        )
        self.bias = nn.Parameter(torch.empty(hidden_size).uniform_(-0.01, 0.01))
        with torch.no_grad():
            self.skew.copy_(self.initial_skew(init, hidden_size).tril(-1))

    @staticmethod
    def initial_skew(init: str, size: int) -> Tensor:
        if init == "random":
            return haar_skew(size)
        angles = skew_angles(init, size)
        skew = torch.zeros(size, size, dtype=torch.float64)
        index = torch.arange(len(angles)) * 2
        skew[index + 1, index] = angles.double()
        return skew - skew.T

    @property
    def skew(self) -> Tensor:
        """The stored matrix whose strictly lower triangle L gives A = L - L^T."""
        return self.recurrent.parametrizations.weight.original

    @property
    def w_hh(self) -> Tensor:
        """W_hh = exp(A), computed anew at every read."""
        return self.recurrent.weight

    def optimizer_groups(self) -> list[dict]:
        recurrent = {"params": [self.skew]}
        if self.recurrent_lr is not None:
            recurrent["lr"] = self.recurrent_lr
        return [{"params": [self.input.weight, self.bias]}, recurrent]

    def forward(self, x: Tensor, state: LayerState) -> tuple[Tensor, LayerState]:
        y, final, _ = self._run(x, state, keep=False)
        return y, final

    def unrolled(self, x: Tensor, state: LayerState) -> tuple[Tensor, LayerState, StepStates]:
        return self._run(x, state, keep=True)

    def _run(self, x: Tensor, state: LayerState, keep: bool):
        w_hh_t = self.w_hh.T  # one matrix exponential for the whole sequence
        projected = F.linear(x.transpose(0, 1), self.input.weight)  # every W_ih x_t at once
        (h,) = state
        hs = []
        for x_term in projected.unbind(0):
            h = modrelu(torch.addmm(x_term, h, w_hh_t), self.bias)
            hs.append(h)
        steps: StepStates = {"h": hs} if keep else {}
        return torch.stack(hs, dim=1), (h,), steps
