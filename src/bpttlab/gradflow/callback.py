"""GradientFlow: a Lightning callback that logs ||dL/dh_k|| for every timestep k and layer to
TensorBoard and saves each probe as an npz (the profile's definition: ``gradflow.profile``)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from bpttlab import checks
from bpttlab.bptt import shared_timesteps
from bpttlab.gradflow.figures import heatmap_figure, profile_figure
from bpttlab.gradflow.profile import Probe, profile_summary, save_profile
from bpttlab.module import SequenceModule, tensorboard_writer


class GradientFlow(L.Callback):
    """Log ||dL/dh_k|| for every timestep k, state and layer (h_k, and c_k for LSTM).

    On the first training step and then every ``every_n_steps`` optimiser steps, the module
    runs its training step on the unrolled path with a Probe on every state. With an exact
    fast path (the native CPU kernel) probing changes no number; otherwise only by rounding.

    Every probe writes a few scalars per state to TensorBoard under ``grad_flow/`` (see
    ``profile_summary``) and ``<save_dir>/step_NNNNNN.npz``. Figures cost far more than a probe,
    so they are drawn on the first probe, then on the first probe at least
    ``figures_every_n_steps`` after the last drawing, and on the last probe of the run: a heatmap
    image per state (the history of every probe's log10 norms, so no row is lost) and a profile
    figure (that step, log scale, task landmarks and truncation boundaries).

    Args:
        every_n_steps: optimiser steps between probes (>= 1).
        full_reference: under truncated BPTT, also compute the full-BPTT gradient on the same
            batch at the same weights, log its profile beside the truncated one and the cosine
            similarity of the truncated and full parameter gradients (an extra forward/backward).
        past_threshold: relative threshold of ``steps_in_past``.
        figures_every_n_steps: optimiser steps between TensorBoard figures (>= 1).
        save_dir: where the .npz profiles go; default ``<trainer.default_root_dir>/grad_flow``.
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
        self.figures_every_n_steps = checks.integer(
            "figures_every_n_steps", figures_every_n_steps, 1
        )
        self.save_dir = Path(save_dir) if save_dir else None
        self.history: dict[str, list[np.ndarray]] = {}
        self.history_steps: list[int] = []
        self._last_probe: int | None = None
        self._probe: Probe | None = None
        self._reference: tuple[Probe, float] | None = None
        self._last_figures: int | None = None
        self._undrawn: tuple[int, dict, dict] | None = None  # the last probe, if not drawn

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not isinstance(pl_module, SequenceModule):
            raise TypeError("GradientFlow needs a bpttlab SequenceModule")
        if not any(isinstance(lg, TensorBoardLogger) for lg in trainer.loggers):
            raise ValueError(
                "GradientFlow needs a TensorBoardLogger: set logger=tensorboard or drop it with ~callbacks.grad_flow"
            )
        if self.save_dir is None:
            self.save_dir = Path(trainer.default_root_dir) / "grad_flow"

    def state_dict(self) -> dict[str, object]:
        """The probe history, so that a resumed run's heatmaps continue where they stopped."""
        history = {name: torch.from_numpy(np.stack(rows)) for name, rows in self.history.items()}
        return {
            "history": history,
            "history_steps": self.history_steps,
            "last_probe": self._last_probe,
            "last_figures": self._last_figures,
        }

    def load_state_dict(self, state_dict: dict[str, object]) -> None:
        self.history = {name: list(rows.numpy()) for name, rows in state_dict["history"].items()}
        self.history_steps = list(state_dict["history_steps"])
        self._last_probe = state_dict["last_probe"]
        self._last_figures = state_dict.get("last_figures")

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
            self._reference = reference, pl_module.full_gradient_reference(step, reference)

    def on_train_batch_end(
        self, trainer, pl_module: SequenceModule, outputs, batch, batch_idx
    ) -> None:
        probe, self._probe = self._probe, None
        reference, self._reference = self._reference, None
        if probe is None or not probe.recorded:  # not probed, or diverged before a backward
            return
        profiles = probe.profiles()
        full = reference[0].profiles() if reference else {}
        cosine = reference[1] if reference else None
        self.save_dir.mkdir(parents=True, exist_ok=True)
        save_profile(
            self.save_dir / f"step_{probe.step:06d}.npz",
            probe.step,
            pl_module.task.seq_len,
            pl_module.bptt.truncation,
            boundaries(pl_module),
            pl_module.task.landmarks(),
            profiles,
            full,
        )
        self._log(trainer, pl_module, probe.step, profiles, full, cosine)

    def on_train_end(self, trainer, pl_module: SequenceModule) -> None:
        if self._undrawn is not None:
            self._draw(trainer, pl_module, *self._undrawn)

    def _log(self, trainer, module: SequenceModule, step: int, profiles, full, cosine) -> None:
        writer = tensorboard_writer(trainer)
        self.history_steps.append(step)
        for name, profile in profiles.items():
            self.history.setdefault(name, []).append(profile)
            for key, value in profile_summary(profile, self.past_threshold).items():
                writer.add_scalar(f"grad_flow/{name}/{key}", value, step)
            if name in full:
                writer.add_scalar(
                    f"grad_flow/{name}/full_decay_per_step",
                    profile_summary(full[name], self.past_threshold)["decay_per_step"],
                    step,
                )
        if cosine is not None:
            writer.add_scalar("grad_flow/truncation_cosine", cosine, step)
        self._undrawn = step, profiles, full
        last = self._last_figures
        if last is None or step - last >= self.figures_every_n_steps:
            self._draw(trainer, module, step, profiles, full)

    def _draw(self, trainer, module: SequenceModule, step: int, profiles, full) -> None:
        """The heatmaps (every probe so far) and the profile figure of ``step``."""
        writer = tensorboard_writer(trainer)
        for name in profiles:
            fig = heatmap_figure(
                np.stack(self.history[name]), self.history_steps, f"log10 ||dL/d{name}||"
            )
            writer.add_figure(f"grad_flow/heatmap/{name}", fig, step)
        lines = dict(profiles) | {f"full {k}": v for k, v in full.items()}
        fig = profile_figure(lines, step, module.task.landmarks(), boundaries(module))
        writer.add_figure("grad_flow/profile", fig, step)
        self._last_figures, self._undrawn = step, None


def boundaries(module: SequenceModule) -> list[int]:
    """Timesteps where a truncation window starts (beyond which no gradient flows)."""
    return sorted({w.start for w in module.windows if w.start > 0})
