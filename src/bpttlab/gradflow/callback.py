"""GradientFlow: a Lightning callback that logs ||dL/dh_k|| for every timestep k and layer to the
Trainer's loggers and saves each probe as an npz (the profile's definition: ``gradflow.profile``)."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from bpttlab import checks
from bpttlab.bptt import shared_timesteps
from bpttlab.gradflow.figures import FAMILY, ProbeFigures
from bpttlab.gradflow.profile import Probe, profile_summary, save_profile
from bpttlab.gradflow.reference import full_gradient_reference
from bpttlab.module import SequenceModule
from bpttlab.module.scalars import log_scalars


class GradientFlow(L.Callback):
    """Log ||dL/dh_k|| for every timestep k, state and layer (h_k, and c_k for LSTM).

    On the first training step and then every ``every_n_steps`` optimiser steps, the module
    runs its training step on the unrolled path with a Probe on every state. With an exact
    fast path (the native CPU kernel) probing changes no number; otherwise only by rounding.

    Every probe writes a few scalars per state under ``z_grad_flow/`` (``figures.FAMILY``: see
    ``profile_summary``)
    to every logger of the Trainer, and ``<save_dir>/step_NNNNNN.npz``. With a TensorBoardLogger
    it also draws figures (``figures.ProbeFigures``): heatmaps of every probe so far and the
    profile of the probed step, on the first probe, then at most every
    ``figures_every_n_steps``, and on the last probe of the run.

    Args:
        every_n_steps: optimiser steps between probes (>= 1).
        full_reference: under truncated BPTT, also compute the full-BPTT gradient on the same
            batch at the same weights, log its profile beside the truncated one and the cosine
            similarity of the truncated and full parameter gradients (an extra forward/backward).
        past_threshold: relative threshold of ``steps_in_past``.
        figures_every_n_steps: optimiser steps between TensorBoard figures (>= 1).
        save_dir: where the .npz profiles go; by default ``grad_flow/`` in the fit's own log
            directory (``fit_log_dir``), so that two fits never share it.
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        full_reference: bool = False,
        past_threshold: float = 1e-3,
        figures_every_n_steps: int = 200,
        save_dir: str | None = None,
    ):
        self.every_n_steps = checks.integer("every_n_steps", every_n_steps, 1)
        self.past_threshold = checks.positive("past_threshold", past_threshold)
        self.full_reference = checks.boolean("full_reference", full_reference)
        every_figure = checks.integer("figures_every_n_steps", figures_every_n_steps, 1)
        self.figures = ProbeFigures(every_figure)
        self.save_dir = Path(save_dir) if save_dir else None
        self.profile_dir: Path | None = None  # where this fit's profiles go
        self._last_probe: int | None = None
        self._probe: Probe | None = None
        self._reference: tuple[Probe, float] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        require_module_and_logger("GradientFlow", trainer, pl_module)
        self.profile_dir = self.save_dir or fit_log_dir(trainer) / "grad_flow"

    @property
    def probed_steps(self) -> list[int]:
        """The training steps probed so far, in order."""
        return list(self.figures.steps)

    def state_dict(self) -> dict[str, object]:
        """The probe history, so that a resumed run's heatmaps continue where they stopped."""
        rows = self.figures.history.items()
        return {
            "history": {name: torch.from_numpy(np.stack(r)) for name, r in rows},
            "history_steps": self.figures.steps,
            "last_probe": self._last_probe,
            "last_figures": self.figures.last_drawn,
        }

    def load_state_dict(self, state_dict: dict[str, object]) -> None:
        history = state_dict["history"].items()
        self.figures.history = {name: list(rows.numpy()) for name, rows in history}
        self.figures.steps = list(state_dict["history_steps"])
        self.figures.last_drawn = state_dict.get("last_figures")
        self._last_probe = state_dict["last_probe"]

    def _due(self, step: int) -> bool:
        if self._last_probe is None:
            return True
        return step // self.every_n_steps > self._last_probe // self.every_n_steps

    def on_train_batch_start(self, trainer, pl_module: SequenceModule, batch, batch_idx) -> None:
        step = trainer.global_step
        if not self._due(step):
            return
        self._last_probe = step
        shared = shared_timesteps(pl_module.windows)
        self._probe = Probe(step, pl_module.batch_size, pl_module.task.seq_len, shared)
        pl_module.trace_next_step(self._probe)
        if self.full_reference and pl_module.bptt.truncation is not None:
            reference = Probe(step, pl_module.batch_size, pl_module.task.seq_len)
            cosine = full_gradient_reference(pl_module, step, reference)
            self._reference = reference, cosine

    def on_train_batch_end(
        self, trainer, pl_module: SequenceModule, outputs, batch, batch_idx
    ) -> None:
        probe, self._probe = self._probe, None
        reference, self._reference = self._reference, None
        if probe is None or not probe.recorded:  # not probed, or diverged before a backward
            return
        profiles = probe.profiles()
        full = reference[0].profiles() if reference else {}
        task, step = pl_module.task, probe.step
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        path = self.profile_dir / f"step_{step:06d}.npz"
        adaptive, cuts = pl_module.adaptive, boundaries(pl_module)
        truncation = adaptive.truncation if adaptive else pl_module.bptt.truncation
        save_profile(path, step, task.seq_len, truncation, cuts, task.landmarks(), profiles, full)
        log_scalars(trainer.loggers, self._scalars(profiles, full, reference), step)
        writer = tensorboard_writer(trainer)
        self.figures.add(writer, step, profiles, full, task.landmarks(), cuts)

    def on_train_end(self, trainer, pl_module: SequenceModule) -> None:
        self.figures.draw_undrawn()

    def _scalars(self, profiles, full, reference) -> dict[str, float]:
        """The ``profile_summary`` of every state, the full reference's decay, the cosine."""
        scalars = {}
        for name, profile in profiles.items():
            summary = profile_summary(profile, self.past_threshold)
            scalars |= {f"{FAMILY}/{name}/{key}": value for key, value in summary.items()}
            if name in full:
                decay = profile_summary(full[name], self.past_threshold)["decay_per_step"]
                scalars[f"{FAMILY}/{name}/full_decay_per_step"] = decay
        if reference is not None:
            scalars[f"{FAMILY}/truncation_cosine"] = reference[1]
        return scalars


def require_module_and_logger(name: str, trainer: L.Trainer, module: L.LightningModule) -> None:
    """What a callback that probes a SequenceModule and logs what it finds needs of the fit."""
    if not isinstance(module, SequenceModule):
        raise TypeError(f"{name} needs a bpttlab SequenceModule, not {type(module)}")
    if not trainer.loggers:
        raise ValueError(
            f"{name} logs to the Trainer's loggers and this Trainer has none: give it one, e.g. "
            f"Trainer(logger=CSVLogger(save_dir)), or leave {name} out of Trainer(callbacks=...)"
        )


def fit_log_dir(trainer: L.Trainer) -> Path:
    """The fit's own log directory, where ModelCheckpoint puts its ``checkpoints/``:
    ``<save_dir>/<name>/<version>`` of the first logger (``trainer.log_dir`` for a
    TensorBoardLogger or CSVLogger: ``lightning_logs/version_N`` by default)."""
    logger = trainer.loggers[0]
    version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
    path = os.path.join(logger.save_dir or trainer.default_root_dir, str(logger.name), version)
    return Path(trainer.strategy.broadcast(path))


def tensorboard_writer(trainer: L.Trainer):
    """The SummaryWriter of ``trainer``'s TensorBoardLogger, or None without one."""
    boards = (lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger))
    return next((board.experiment for board in boards), None)


def boundaries(module: SequenceModule) -> list[int]:
    """Timesteps where a truncation window starts (beyond which no gradient flows)."""
    return sorted({w.start for w in module.windows if w.start > 0})
