"""The forward-dynamics twin of the vanishing figure: the Lyapunov spectrum of every cell at
initialisation and after training on copy, its leading exponent beside the decay per step of
the gradient profile ||dL/dh_k|| measured on the same steps. Writes a figure and prints a
markdown table.

    python scripts/lyapunov_cells.py --out docs/figures/lyapunov_cells.png
"""

from __future__ import annotations

import argparse
import functools
import math
import tempfile
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger
from matplotlib.figure import Figure

from bpttlab import CopyTask, GradientFlow, RecurrentNet, SequenceModule
from bpttlab.gradflow import load_profile, profile_summary
from bpttlab.gradflow.lyapunov_callback import LyapunovSpectra

CELL_KINDS = ("rnn", "lstm", "gru", "orthogonal", "lru", "mingru", "minlstm")


def train(kind: str, args: argparse.Namespace, root: Path) -> tuple[np.ndarray, dict]:
    """Train one cell; its spectra (2 x k: init, last measured step) and its profiles'
    decay per step at the same two steps."""
    L.seed_everything(0, verbose=False)
    task = CopyTask(gap=args.gap, recall_loss_only=True)
    model = RecurrentNet(
        task.input_size, task.output_size, kind=kind, hidden_size=args.hidden, t_max=task.seq_len
    )
    module = SequenceModule(
        model,
        task,
        functools.partial(torch.optim.Adam, lr=3e-3),
        batch_size=32,
        val_batches=1,
        stop_when_solved=False,
    )
    last = args.steps - 1
    callbacks = [
        GradientFlow(every_n_steps=last, save_dir=str(root / "grad_flow")),
        LyapunovSpectra(every_n_steps=last, k=args.k, warmup=10, save_dir=str(root / "lyap")),
    ]
    trainer = L.Trainer(
        max_steps=args.steps,
        max_epochs=-1,
        val_check_interval=args.steps,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        logger=CSVLogger(str(root)),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module)
    spectra = np.stack(
        [np.load(root / "lyap" / f"step_{s:06d}.npz")["exponents"][0] for s in (0, last)]
    )
    decays = {}
    for s in (0, last):
        profile = load_profile(root / "grad_flow" / f"step_{s:06d}.npz")["h_layer0"]
        decays[s] = profile_summary(profile, 1e-3)["decay_per_step"]
    return spectra, {"init": decays[0], "trained": decays[last]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gap", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("lyapunov_cells.png"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    fig = Figure(figsize=(12, 5.6), dpi=80)
    axes = fig.subplots(2, 4).ravel()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for ax, kind in zip(axes, CELL_KINDS, strict=False):
            spectra, decays = train(kind, args, Path(tmp) / kind)
            ax.plot(spectra[0], "--", color="C0", label="init")
            ax.plot(spectra[1], "-", color="C1", label=f"step {args.steps - 1}")
            ax.axhline(0.0, color="grey", linestyle=":", linewidth=0.8)
            ax.set(title=kind, xlabel="i")
            lead = spectra[:, 0] / math.log(10)
            rows.append(
                f"| {kind} | {spectra[0, 0]:+.3f} | {lead[0]:+.3f} | {decays['init']:+.3f} "
                f"| {spectra[1, 0]:+.3f} | {lead[1]:+.3f} | {decays['trained']:+.3f} |"
            )
    axes[0].set_ylabel("exponent (nats / timestep)")
    axes[0].legend(fontsize=8)
    axes[-1].axis("off")
    fig.suptitle(f"Lyapunov spectra on copy (gap {args.gap}, hidden {args.hidden}), top {args.k}")
    fig.tight_layout()
    fig.savefig(args.out)
    header = "| cell | λ1 init | λ1/ln10 init | decay init | λ1 trained | λ1/ln10 trained | decay trained |"
    print("\n".join([header, "|" + "---|" * 7, *rows]))


if __name__ == "__main__":
    main()
