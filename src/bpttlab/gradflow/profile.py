"""Gradient-flow profiles: the norm of dL/dh_k at every timestep k, their summary scalars, and
their files. Needs only torch and numpy (no Lightning, no matplotlib).

Definition. On a probed step with a batch of B sequences, let L = sum_b l_b be the training loss
taken as the batch *sum* of the per-sequence losses l_b (each the task's loss of sequence b),
and h_k^(b) the hidden state of one layer at timestep k for sequence b. The profile is

    ||dL/dh_k|| = (1/B) * sum_b || dL / dh_k^(b) ||_2

the per-example L2 norm of the *total* gradient (through the output at k and through every
later state), averaged over the batch, so values do not shrink as B grows. Every state of a
cell is profiled (the LSTM's cell state c_k too); a complex state's norm is taken over its real
and imaginary parts. The gradients are those of the backward pass that feeds the optimiser:
under truncated BPTT the truncated gradients the optimiser used (summed over the windows that
hold step k, and zero where no gradient reaches); under per-timestep clipping, what arrives at
h_k before it is clipped there.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from bpttlab.model import Trace


class Probe:
    """Gradients of one probed training step, recorded by tensor hooks during its backward; a
    probe (``bptt.run_windows``): call it with each Trace and its first timestep.

    Each state's gradient is reduced to its profile value (``step_norm``) as soon as it is
    complete, so a probe's memory does not grow with the sequence. A timestep that several
    windows run (TBPTT with update_every < truncation: ``shared``) sums its windows' gradients
    first; it is complete once a later window starts after it.

    Args:
        step: the optimiser step probed.
        batch_size: B, for the profile's per-example scale.
        seq_len: T.
        shared: timesteps that more than one window runs (``bptt.shared_timesteps``).
    """

    def __init__(
        self, step: int, batch_size: int, seq_len: int, shared: frozenset[int] = frozenset()
    ):
        self.step = step
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.shared = shared
        self.norms: dict[tuple[str, int], Tensor] = {}
        self._pending: dict[tuple[str, int], dict[int, Tensor]] = {}
        self._recorded_since_trace = False

    def __call__(self, trace: Trace, offset: int) -> None:
        if self._recorded_since_trace:  # a new window: no later one runs the steps before it
            self._complete(before=offset)
            self._recorded_since_trace = False
        for name, layer, t, state in trace.states():
            state.register_hook(partial(self._record, (name, layer), offset + t))
        for key, sink in trace.sinks.items():
            sink.register_hook(partial(self._record_span, key, offset))

    @property
    def recorded(self) -> bool:
        """Whether any gradient arrived (a step that diverged before its backward has none)."""
        return bool(self.norms or self._pending)

    def _record(self, key: tuple[str, int], t: int, grad: Tensor) -> None:
        """The gradient of timestep ``t``, from a step loop's state."""
        self._record_span(key, t, grad.unsqueeze(0))

    def _record_span(self, key: tuple[str, int], offset: int, grads: Tensor) -> None:
        """The gradients of every timestep from ``offset`` on (a kernel's sink: all of them)."""
        self._recorded_since_trace = True
        norms = self._norms(key, grads)
        norms[offset : offset + len(grads)] = step_norm(grads, self.batch_size)
        pending = self._pending.setdefault(key, {})
        for t in self.shared.intersection(range(offset, offset + len(grads))):
            grad = grads[t - offset]
            pending[t] = pending[t] + grad if t in pending else grad.clone()

    def _norms(self, key: tuple[str, int], like: Tensor) -> Tensor:
        norms = self.norms.get(key)
        if norms is None:
            norms = torch.zeros(self.seq_len, dtype=torch.float64, device=like.device)
            self.norms[key] = norms
        return norms

    def _store(self, key: tuple[str, int], t: int, grad: Tensor) -> None:
        self._norms(key, grad)[t] = step_norm(grad, self.batch_size)

    def _complete(self, before: int) -> None:
        for key, pending in self._pending.items():
            for t in [t for t in pending if t < before]:
                self._store(key, t, pending.pop(t))

    def profiles(self) -> dict[str, np.ndarray]:
        """``{"<name>_layer<l>": (T,) profile}`` for every recorded state."""
        self._complete(before=self.seq_len)
        return {
            f"{name}_layer{layer}": norms.cpu().numpy()
            for (name, layer), norms in sorted(self.norms.items())
        }


def step_norm(grad: Tensor, batch_size: int) -> Tensor:
    """(B, H) gradient of the batch-mean loss at one timestep -> the mean per-example norm of
    the batch-sum loss's gradient (see the module docstring), in float64; a complex state's
    norm is over its real and imaginary parts."""
    if grad.is_complex():
        grad = torch.view_as_real(grad).flatten(-2)
    norms = torch.linalg.vector_norm(grad, dim=-1, dtype=torch.float64)  # no float32 underflow
    return norms.mean(dim=-1) * batch_size


def state_norms(grads: Tensor, batch_size: int) -> np.ndarray:
    """(T, B, H) gradients -> the (T,) profile: ``step_norm`` at every timestep."""
    return step_norm(grads, batch_size).cpu().numpy()


def profile_summary(profile: np.ndarray, past_threshold: float) -> dict[str, float]:
    """Scalars of one profile ||dL/dh_k||, k = 0..T-1.

    first, last: the norm at k = 0 and k = T-1; ratio: first / last.
    decay_per_step: slope of log10 norm against distance from the end of the sequence (T-1-k),
        fitted by least squares over the timesteps with a non-zero norm; -1 means a tenfold
        drop per step back in time.
    steps_in_past: fraction of timesteps whose norm exceeds ``past_threshold`` times the largest
        norm of the profile, i.e. how far back the gradient still carries signal (after the
        "steps in the past" of Pascanu et al. 2013).
    """
    first, last = float(profile[0]), float(profile[-1])
    distance = np.arange(len(profile))[::-1]
    alive = profile > 0
    if alive.sum() >= 2:
        decay = float(np.polyfit(distance[alive], np.log10(profile[alive]), 1)[0])
    else:
        decay = float("nan")
    peak = float(profile.max())
    return {
        "first": first,
        "last": last,
        "ratio": first / last if last > 0 else float("nan"),
        "decay_per_step": decay,
        "steps_in_past": float((profile > past_threshold * peak).mean()) if peak > 0 else 0.0,
    }


def save_profile(
    path: Path,
    step: int,
    seq_len: int,
    truncation: int | None,
    boundaries: list[int],
    landmarks: dict[str, tuple[int, int]],
    profiles: dict[str, np.ndarray],
    full: dict[str, np.ndarray],
) -> None:
    """Write one probe as ``step_NNNNNN.npz`` (read back with ``load_profile``)."""
    np.savez(
        path,
        step=step,
        seq_len=seq_len,
        truncation=-1 if truncation is None else truncation,
        boundaries=np.array(boundaries, dtype=int),
        landmark_names=np.array(list(landmarks), dtype=str),
        landmark_spans=np.array(list(landmarks.values()), dtype=int).reshape(-1, 2),
        **profiles,
        **{f"full_{k}": v for k, v in full.items()},
    )


def load_profile(path: str | Path) -> dict[str, np.ndarray]:
    """Read a saved ``step_NNNNNN.npz`` back into a dict of arrays."""
    with np.load(path) as data:
        return {k: data[k] for k in data.files}
