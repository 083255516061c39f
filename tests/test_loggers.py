"""Library use with the user's own Trainer, loggers and callbacks: training scalars reach every
logger and the callbacks that monitor them, GradientFlow works without TensorBoard and keeps
each fit's profiles apart, and a fit's hyperparameters reach TensorBoard's HPARAMS tab."""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import small_module
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from bpttlab import CopyTask, GradientFlow
from bpttlab.gradflow import load_profile
from bpttlab.tasks import TRAIN, batch_generator

TAGS = ("loss", "normalized_loss", "grad_norm", "clipped", "clipped_fraction")


def user_trainer(root: Path, steps: int, **options) -> L.Trainer:
    """A Trainer as a user writes one: Lightning's defaults but for a short, quiet CPU run."""
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
        **options,
    )


def csv_rows(logger: CSVLogger, tag: str) -> list[tuple[int, float]]:
    """(step, value) of every row of the CSVLogger's metrics.csv that holds ``tag``."""
    with open(Path(logger.log_dir) / "metrics.csv") as file:
        return [(int(r["step"]), float(r[tag])) for r in csv.DictReader(file) if r.get(tag)]


def scalars(log_dir: str, tag: str) -> list[tuple[int, float]]:
    """(step, value) of ``tag`` in the TensorBoard event files of ``log_dir``, read back by
    TensorBoard's own EventAccumulator."""
    events = EventAccumulator(log_dir)
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_training_scalars_reach_every_logger_at_the_optimiser_step(tmp_path):
    """TBPTT(5) on copy (gap 6: 6 optimiser steps per batch), 5 batches, log_every_n_steps=2:
    TensorBoard and CSV both get every training scalar after batches 2 and 4 and after the
    last batch, at the optimiser steps 12, 24 and 30, with the same values."""
    seq = small_module(CopyTask(gap=6), "gru", truncation=5)
    assert seq.updates_per_batch() == 6
    board = TensorBoardLogger(str(tmp_path), name="tb")
    table = CSVLogger(str(tmp_path), name="csv")
    user_trainer(tmp_path, 30, logger=[board, table], log_every_n_steps=2).fit(seq)
    for tag in TAGS:
        in_board = scalars(board.log_dir, f"train/{tag}")
        in_table = csv_rows(table, f"train/{tag}")
        assert [step for step, _ in in_board] == [12, 24, 30], tag
        assert [step for step, _ in in_table] == [12, 24, 30], tag
        np.testing.assert_allclose(
            [v for _, v in in_board], [v for _, v in in_table], rtol=1e-6, err_msg=tag
        )


def test_a_fit_shorter_than_the_logging_interval_logs_its_last_step(tmp_path):
    """Three batches under Lightning's default log_every_n_steps (50), a CSVLogger alone: the
    loss of the last batch is in metrics.csv at step 3, the value callbacks saw."""
    seq = small_module(CopyTask(gap=4), "rnn")
    table = CSVLogger(str(tmp_path))
    trainer = user_trainer(tmp_path, 3, logger=table)
    trainer.fit(seq)
    [(step, loss)] = csv_rows(table, "train/loss")
    assert step == 3
    assert loss == pytest.approx(trainer.callback_metrics["train/loss"].item(), rel=1e-6)


def masked_cross_entropy(seq, step: int) -> float:
    """The loss of the training batch of ``step`` at the module's weights, written out in
    float64: the mean over the batch's targets of -log softmax."""
    batch = seq.task.generate(seq.batch_size, batch_generator(0, TRAIN, step, "cpu"))
    with torch.no_grad():
        logits = copy.deepcopy(seq.model).double()(batch.inputs).outputs
    log_p = logits.log_softmax(-1).gather(-1, batch.targets[..., None])[..., 0]
    return (-(log_p * batch.mask).sum() / batch.mask.sum()).item()


def test_model_checkpoint_monitors_the_training_loss(tmp_path):
    """A real ModelCheckpoint(monitor="train/loss") checking after every batch, no logger at
    all: at lr=0 (fixed weights) the best score it keeps is the smallest of the six batches'
    losses, computed apart, and its file names that batch's step."""
    seq = small_module(CopyTask(gap=5), "lstm", lr=0.0)
    best = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", monitor="train/loss", every_n_train_steps=1, save_top_k=1
    )
    user_trainer(tmp_path, 6, logger=False, callbacks=[best]).fit(seq)
    losses = [masked_cross_entropy(seq, step) for step in range(6)]
    assert best.best_model_score.item() == pytest.approx(min(losses), rel=1e-5)
    assert f"step={int(np.argmin(losses)) + 1}" in Path(best.best_model_path).name


def test_gradient_flow_without_tensorboard(tmp_path):
    """A CSVLogger only: GradientFlow probes steps 0, 2, 4, writes their npz files into the
    logger's own directory and its scalars into metrics.csv at those steps."""
    seq = small_module(CopyTask(gap=5), "lstm")
    table = CSVLogger(str(tmp_path))
    flow = GradientFlow(every_n_steps=2)
    trainer = user_trainer(tmp_path, 5, logger=table, callbacks=[flow])
    trainer.fit(seq)
    assert flow.profile_dir == Path(trainer.log_dir) / "grad_flow"
    saved = sorted(p.name for p in flow.profile_dir.glob("*.npz"))
    assert saved == ["step_000000.npz", "step_000002.npz", "step_000004.npz"]
    for state in ("h_layer0", "c_layer0"):
        rows = csv_rows(table, f"z_grad_flow/{state}/last")
        profiles = [load_profile(flow.profile_dir / name)[state] for name in saved]
        assert [step for step, _ in rows] == [0, 2, 4]
        np.testing.assert_allclose([v for _, v in rows], [p[-1] for p in profiles], rtol=1e-6)


def probed_fit(root: Path, seed: int, steps: int) -> Path:
    """Fit a GRU with GradientFlow every 2 steps and Lightning's default logger; return where
    its profiles went."""
    flow = GradientFlow(every_n_steps=2)
    user_trainer(root, steps, callbacks=[flow]).fit(small_module(CopyTask(gap=5), "gru", seed=seed))
    return flow.profile_dir


def test_two_fits_in_one_root_keep_separate_complete_profiles(tmp_path):
    """Two fits (different seeds, 7 and 3 steps) in the same default_root_dir: each fit's
    profiles sit in its own version directory, all of them, and the second fit leaves the
    first one's step 0 as it was."""
    first = probed_fit(tmp_path, seed=0, steps=7)
    first_step0 = load_profile(first / "step_000000.npz")
    second = probed_fit(tmp_path, seed=1, steps=3)
    assert [first, second] == [
        tmp_path / "lightning_logs" / v / "grad_flow" for v in ("version_0", "version_1")
    ]
    assert sorted(p.stem for p in first.glob("*.npz")) == [f"step_00000{s}" for s in (0, 2, 4, 6)]
    assert sorted(p.stem for p in second.glob("*.npz")) == ["step_000000", "step_000002"]
    again = load_profile(first / "step_000000.npz")
    other = load_profile(second / "step_000000.npz")
    np.testing.assert_array_equal(again["h_layer0"], first_step0["h_layer0"])
    assert not np.allclose(other["h_layer0"], first_step0["h_layer0"])


def test_gradient_flow_without_any_logger_says_so_in_python_terms(tmp_path):
    """Trainer(logger=False): the error names Trainer(logger=...), not a command-line key."""
    trainer = user_trainer(tmp_path, 1, logger=False, callbacks=[GradientFlow()])
    with pytest.raises(ValueError, match=r"Trainer\(logger=") as raised:
        trainer.fit(small_module(CopyTask(gap=4), "rnn"))
    assert "~callbacks" not in str(raised.value) and "logger=tensorboard" not in str(raised.value)


def test_a_library_fit_fills_the_hparams_tab(tmp_path):
    """Lightning's default TensorBoardLogger: TensorBoard's hparams plugin data holds the
    module's hyperparameters as readable values."""
    seq = small_module(CopyTask(gap=6), "gru", truncation=5, lr=0.01)
    trainer = user_trainer(tmp_path, 1)
    trainer.fit(seq)
    events = EventAccumulator(trainer.log_dir)
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    logged = HParamsPluginData.FromString(content).session_start_info.hparams
    values = {name: getattr(v, v.WhichOneof("kind")) for name, v in logged.items()}
    parameters = sum(p.numel() for p in seq.parameters())
    assert values == {
        "cell": "gru",
        "hidden_size": 6,
        "num_layers": 1,
        "parameters": parameters,
        "task": "copy",
        "gap": 6,
        "recall_loss_only": False,
        "truncation": "5",
        "update_every": "5",
        "clip": "none",
        "clip_threshold": 1.0,
        "optim": "sgd",
        "lr": 0.01,
        "batch_size": 4,
        "val_batches": 1,
        "seed": 0,
    }
