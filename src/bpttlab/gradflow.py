"""GradientFlow: the norm of dL/dh_k at every timestep k, logged to TensorBoard and saved.

Definition. On a probed step with a batch of B sequences, let L = sum_b l_b be the training loss
taken as the batch *sum* of the per-sequence losses l_b (each the task's loss of sequence b),
and h_k^(b) the hidden state of one layer at timestep k for sequence b. GradientFlow records

    ||dL/dh_k|| = (1/B) * sum_b || dL / dh_k^(b) ||_2

the per-example L2 norm of the *total* gradient (through the output at k and through every
later state), averaged over the batch, so values do not shrink as B grows. For LSTM the same
is recorded for the cell state c_k. The gradients are those of the backward pass that feeds the
optimiser: under truncated BPTT they are the truncated gradients the optimiser used (summed over
the windows that hold step k, and zero where no gradient reaches); under per-timestep clipping,
what arrives at h_k before it is clipped there.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import matplotlib
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from bpttlab import validation
from bpttlab.bptt import BPTT
from bpttlab.module import Probe, SequenceModule

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

TINY = 1e-30  # floor for log10 of a zero norm


def state_norms(grads: torch.Tensor, batch_size: int) -> np.ndarray:
    """(T, B, H) gradients of the batch-mean loss -> (T,) mean per-example norm of the batch-sum
    loss's gradient (see the module docstring)."""
    return (grads.double() * batch_size).norm(dim=-1).mean(dim=-1).cpu().numpy()


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


def heatmap_figure(history: np.ndarray, steps: list[int], title: str) -> plt.Figure:
    """log10 ||dL/dh_k||: timestep k across, training step down, with a colour bar."""
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=80)
    image = ax.imshow(
        np.log10(np.maximum(history, TINY)),
        aspect="auto",
        interpolation="nearest",
        cmap="viridis",
        extent=(-0.5, history.shape[1] - 0.5, len(steps) - 0.5, -0.5),
        vmin=_floor(history),
    )
    ticks = np.linspace(0, len(steps) - 1, min(len(steps), 6)).round().astype(int)
    ax.set_yticks(ticks, [str(steps[i]) for i in ticks])
    ax.set(xlabel="timestep k", ylabel="training step", title=title)
    fig.colorbar(image, ax=ax, label="log10 norm", pad=0.02)
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.16, top=0.9)
    return fig


def _floor(history: np.ndarray) -> float | None:
    """Colour-scale floor: the smallest non-zero norm (at most 12 decades below the peak), so
    exact zeros (beyond a truncation) show as the floor without crushing the scale."""
    positive = history[history > 0]
    if not positive.size:
        return None
    return max(float(np.log10(positive.min())), float(np.log10(positive.max())) - 12)


def profile_figure(
    profiles: dict[str, np.ndarray],
    step: int,
    landmarks: dict[str, tuple[int, int]],
    boundaries: list[int],
) -> plt.Figure:
    """||dL/dh_k|| against k on a log scale, with the task's landmarks and truncation bounds."""
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=80)
    colour_of: dict[str, str] = {}
    for name, profile in profiles.items():
        base = name.removeprefix("full ")
        colour = colour_of.setdefault(base, f"C{len(colour_of)}")
        style = "--" if name != base else "-"
        ax.semilogy(
            np.where(profile > 0, profile, np.nan), style, color=colour, label=name, linewidth=1.2
        )
    colours = plt.cm.Pastel1.colors
    for i, (label, (start, end)) in enumerate(landmarks.items()):
        ax.axvspan(start - 0.5, end - 0.5, color=colours[i % len(colours)], alpha=0.6, label=label)
    for j, boundary in enumerate(boundaries):
        ax.axvline(
            boundary - 0.5,
            color="grey",
            linestyle=":",
            linewidth=0.8,
            label="truncation" if j == 0 else None,
        )
    ax.set(xlabel="timestep k", ylabel="||dL/dh_k||", title=f"gradient through time, step {step}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.subplots_adjust(left=0.1, right=0.78, bottom=0.16, top=0.9)
    return fig


class GradientFlow(L.Callback):
    """Log ||dL/dh_k|| for every timestep k and layer (and ||dL/dc_k|| for LSTM).

    On the first training step and then every ``every_n_steps`` optimiser steps, the module
    runs its training step on the unrolled path, which records the gradient flowing into every
    state (see the module docstring for the exact definition). Probing changes no number: on
    CPU the unrolled path is bitwise equal to the fused one.

    TensorBoard, under ``grad_flow/``: a heatmap image per state (history of log10 norms),
    a profile figure (this step, log scale, task landmarks and truncation boundaries), and a few
    scalars per state (see ``profile_summary``). Each probe is also saved as
    ``<save_dir>/step_NNNNNN.npz``.

    Args:
        every_n_steps: optimiser steps between probes (>= 1).
        enabled: False makes the callback do nothing.
        full_reference: under truncated BPTT, also compute the full-BPTT gradient on the same
            batch at the same weights, log its profile beside the truncated one and the cosine
            similarity of the truncated and full parameter gradients (an extra forward/backward).
        past_threshold: relative threshold of ``steps_in_past``.
        save_dir: where the .npz profiles go; default ``<trainer.default_root_dir>/grad_flow``.
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        enabled: bool = True,
        full_reference: bool = False,
        past_threshold: float = 1e-3,
        save_dir: str | None = None,
    ):
        self.every_n_steps = validation.integer("grad_flow.every_n_steps", every_n_steps, 1)
        self.past_threshold = validation.positive("grad_flow.past_threshold", past_threshold)
        self.enabled = enabled
        self.full_reference = full_reference
        self.save_dir = Path(save_dir) if save_dir else None
        self.history: dict[str, list[np.ndarray]] = {}
        self.history_steps: list[int] = []
        self._last_probe: int | None = None
        self._reference: dict[str, object] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self.enabled or stage != "fit":
            return
        if not isinstance(pl_module, SequenceModule):
            raise TypeError("GradientFlow needs a bpttlab SequenceModule")
        if not any(isinstance(lg, TensorBoardLogger) for lg in trainer.loggers):
            raise ValueError(
                "GradientFlow needs a TensorBoardLogger: set logger=tensorboard or grad_flow.enabled=false"
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
        }

    def load_state_dict(self, state_dict: dict[str, object]) -> None:
        self.history = {name: list(rows.numpy()) for name, rows in state_dict["history"].items()}
        self.history_steps = list(state_dict["history_steps"])
        self._last_probe = state_dict["last_probe"]

    def _due(self, step: int) -> bool:
        if self._last_probe is None:
            return True
        return step // self.every_n_steps > self._last_probe // self.every_n_steps

    def on_train_batch_start(self, trainer, pl_module: SequenceModule, batch, batch_idx) -> None:
        if not self.enabled or not self._due(trainer.global_step):
            return
        self._last_probe = trainer.global_step
        pl_module.request_probe()
        if self.full_reference and pl_module.bptt.truncation is not None:
            self._reference = self._full_reference(pl_module, trainer.global_step)

    @staticmethod
    def _full_reference(module: SequenceModule, step: int) -> dict[str, object]:
        """Full-BPTT state gradients and the truncated-vs-full parameter-gradient cosine, on the
        step's batch at the current weights; leaves no gradient behind."""
        batch = module.train_batch(step)
        parameters = list(module.model.parameters())

        def flat_gradient(windows, probe=None) -> torch.Tensor:
            for _ in module.backward_windows(batch, windows, probe):
                pass
            flat = torch.cat([p.grad.flatten() for p in parameters if p.grad is not None])
            module.model.zero_grad(set_to_none=True)
            return flat

        probe = Probe(step, module.batch_size, module.task.seq_len)
        full = flat_gradient(BPTT().windows(module.task.seq_len), probe)
        truncated = flat_gradient(module.windows)
        module.clipping.clipped_deltas = 0
        cosine = torch.nn.functional.cosine_similarity(full, truncated, dim=0).item()
        return {"probe": probe, "cosine": cosine}

    def on_train_batch_end(
        self, trainer, pl_module: SequenceModule, outputs, batch, batch_idx
    ) -> None:
        probe, pl_module.probe = pl_module.probe, None
        if not self.enabled or probe is None or not probe.grads:
            return
        reference, self._reference = self._reference, None
        profiles = {
            _name(k): state_norms(g, probe.batch_size) for k, g in sorted(probe.grads.items())
        }
        full = {}
        if reference is not None:
            ref: Probe = reference["probe"]
            full = {_name(k): state_norms(g, ref.batch_size) for k, g in sorted(ref.grads.items())}
        self._log(trainer, pl_module, probe.step, profiles, full, reference)
        self._save(pl_module, probe.step, profiles, full)

    def _log(self, trainer, module: SequenceModule, step: int, profiles, full, reference) -> None:
        writer = next(lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)).experiment
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
            fig = heatmap_figure(
                np.stack(self.history[name]), self.history_steps, f"log10 ||dL/d{name}||"
            )
            writer.add_figure(f"grad_flow/heatmap/{name}", fig, step)
        if reference is not None:
            writer.add_scalar("grad_flow/truncation_cosine", reference["cosine"], step)
        lines = dict(profiles) | {f"full {k}": v for k, v in full.items()}
        fig = profile_figure(lines, step, module.task.landmarks(), _boundaries(module))
        writer.add_figure("grad_flow/profile", fig, step)

    def _save(self, module: SequenceModule, step: int, profiles, full) -> None:
        self.save_dir.mkdir(parents=True, exist_ok=True)
        landmarks = module.task.landmarks()
        np.savez(
            self.save_dir / f"step_{step:06d}.npz",
            step=step,
            seq_len=module.task.seq_len,
            truncation=-1 if module.bptt.truncation is None else module.bptt.truncation,
            boundaries=np.array(_boundaries(module), dtype=int),
            landmark_names=np.array(list(landmarks), dtype=str),
            landmark_spans=np.array(list(landmarks.values()), dtype=int).reshape(-1, 2),
            **profiles,
            **{f"full_{k}": v for k, v in full.items()},
        )


def _name(key: tuple[str, int]) -> str:
    kind, layer = key
    return f"{kind}_layer{layer}"


def _boundaries(module: SequenceModule) -> list[int]:
    """Timesteps where a truncation window starts (beyond which no gradient flows)."""
    return sorted({w.start for w in module.windows if w.start > 0})


def load_profile(path: str | Path) -> dict[str, np.ndarray]:
    """Read a saved ``step_NNNNNN.npz`` back into a dict of arrays."""
    with np.load(path) as data:
        return {k: data[k] for k in data.files}
