"""Recurrent cells, one module per cell, registered by name (``CELLS``; ``cell=<name>``)."""

from bpttlab.cells.base import CELLS, Cell, LayerState, StepStates, register
from bpttlab.cells.gru import GRUCell
from bpttlab.cells.lru import LRUCell
from bpttlab.cells.lstm import LSTMCell
from bpttlab.cells.mingru import MinGRUCell
from bpttlab.cells.minlstm import MinLSTMCell
from bpttlab.cells.orthogonal import OrthogonalCell
from bpttlab.cells.rnn import RNNCell

__all__ = [
    "CELLS",
    "Cell",
    "GRUCell",
    "LRUCell",
    "LSTMCell",
    "LayerState",
    "MinGRUCell",
    "MinLSTMCell",
    "OrthogonalCell",
    "RNNCell",
    "StepStates",
    "register",
]
