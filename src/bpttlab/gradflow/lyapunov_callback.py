"""LyapunovSpectra: a Lightning callback that measures the leading Lyapunov exponents of every
layer through training (their definition: ``gradflow.lyapunov``), logs them to the Trainer's
loggers and saves each measurement as an npz."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from matplotlib.figure import Figure

from bpttlab import checks
from bpttlab.gradflow.callback import fit_log_dir, require_module_and_logger, tensorboard_writer
from bpttlab.gradflow.lyapunov import network_spectra
from bpttlab.module import SequenceModule
from bpttlab.module.scalars import log_scalars


def spectrum_figure(steps: list[int], history: np.ndarray, layer: int) -> Figure:
    """Each exponent (a line, the leading one darkest) against the training step."""
    fig = Figure(figsize=(7, 3.2), dpi=80)
    ax = fig.add_subplot()
    shades = np.linspace(0.1, 0.8, history.shape[1])
    for i, shade in enumerate(shades):
        ax.plot(steps, history[:, i], marker=".", color=str(shade), linewidth=1.0)
    ax.axhline(0.0, color="C3", linestyle=":", linewidth=0.8)
    ax.set(
        xlabel="training step",
        ylabel="exponent (nats / timestep)",
        title=f"Lyapunov spectrum, layer {layer} (top {history.shape[1]})",
    )
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.16, top=0.9)
    return fig


class LyapunovSpectra(L.Callback):
    """The leading ``k`` Lyapunov exponents of every layer along the first validation batch's
    sequences, on the first training step and then every ``every_n_steps`` optimiser steps
    (at the weights before that step's update); off when ``every_n_steps`` is None.

    Each measurement logs ``lyapunov/layer<L>/leading`` and ``lyapunov/layer<L>/sum_top_k`` to
    every logger, writes ``<save_dir>/step_NNNNNN.npz`` (``exponents``: layers x k, nats per
    timestep, largest first) and, with a TensorBoardLogger, a figure per layer of the spectrum
    over the training steps measured so far. It uses no random numbers of the run: training
    computes the same numbers with it or without it.

    Args:
        every_n_steps: optimiser steps between measurements (>= 1), or None: off.
        k: exponents per layer (all of them when k >= the layer's state size).
        reorth_every: timesteps between QR re-orthonormalisations.
        warmup: leading timesteps not counted (below the task's sequence length).
        save_dir: where the npz files go; by default ``lyapunov/`` in the fit's log directory.
    """

    def __init__(
        self,
        every_n_steps: int | None = None,
        k: int = 8,
        reorth_every: int = 1,
        warmup: int = 10,
        save_dir: str | None = None,
    ):
        self.every_n_steps = checks.integer("every_n_steps", every_n_steps, 1, optional=True)
        self.k = checks.integer("k", k, 1)
        self.reorth_every = checks.integer("reorth_every", reorth_every, 1)
        self.warmup = checks.integer("warmup", warmup, 0)
        self.save_dir = Path(save_dir) if save_dir else None
        self.steps: list[int] = []
        self.history: list[np.ndarray] = []  # per measurement: layers x k

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self.every_n_steps is None:
            return
        require_module_and_logger("LyapunovSpectra", trainer, pl_module)
        if self.warmup >= pl_module.task.seq_len:
            raise checks.ConfigError(
                "warmup",
                self.warmup,
                f"an integer below the sequence length {pl_module.task.seq_len}",
            )
        self.save_dir = self.save_dir or fit_log_dir(trainer) / "lyapunov"

    def state_dict(self) -> dict[str, object]:
        """The measurements so far, so that a resumed run's figure continues where it stopped."""
        return {"steps": list(self.steps), "history": [torch.from_numpy(h) for h in self.history]}

    def load_state_dict(self, state_dict: dict[str, object]) -> None:
        self.steps = list(state_dict["steps"])
        self.history = [h.numpy() for h in state_dict["history"]]

    def _due(self, step: int) -> bool:
        if self.every_n_steps is None:
            return False
        if not self.steps:
            return True
        return step // self.every_n_steps > self.steps[-1] // self.every_n_steps

    def on_train_batch_start(self, trainer, pl_module: SequenceModule, batch, batch_idx) -> None:
        step = trainer.global_step
        if not self._due(step):
            return
        inputs = pl_module.data.validation(0, pl_module.device).inputs
        with torch.no_grad():
            spectra = network_spectra(
                pl_module.model, inputs, self.k, self.reorth_every, self.warmup
            )
        exponents = torch.stack(spectra).double().cpu().numpy()  # layers x k
        self.steps.append(step)
        self.history.append(exponents)
        self.save_dir.mkdir(parents=True, exist_ok=True)
        np.savez(
            self.save_dir / f"step_{step:06d}.npz",
            step=step,
            exponents=exponents,
            reorth_every=self.reorth_every,
            warmup=self.warmup,
            seq_len=pl_module.task.seq_len,
        )
        scalars = {}
        for layer, row in enumerate(exponents):
            scalars[f"lyapunov/layer{layer}/leading"] = float(row[0])
            scalars[f"lyapunov/layer{layer}/sum_top_k"] = float(row.sum())
        log_scalars(trainer.loggers, scalars, step)
        writer = tensorboard_writer(trainer)
        if writer is not None:
            history = np.stack(self.history)  # measurements x layers x k
            for layer in range(history.shape[1]):
                fig = spectrum_figure(self.steps, history[:, layer], layer)
                writer.add_figure(f"lyapunov/spectrum/layer{layer}", fig, step)
