"""bpttlab's own CPU training kernels for the rnn, gru and lstm cells, one module per cell.

Each is one autograd Function: the forward projects the inputs of every timestep with one GEMM,
then runs the step loop (one GEMM per step) into preallocated time-major buffers; the backward
runs the recurrence backward once, collecting every step's gate gradients, then computes the
weight, bias and input gradients with one GEMM or sum over all timesteps. Each kernel's step
loops run in C where they can be compiled (``compiled``, ``*_step.c``).
"""

from bpttlab.cells.kernels.gru import gru
from bpttlab.cells.kernels.lstm import lstm
from bpttlab.cells.kernels.rnn import rnn

__all__ = ["gru", "lstm", "rnn"]
