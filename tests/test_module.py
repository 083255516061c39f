"""SequenceModule's validation: run in chunks of time, scored as the whole sequence would be."""

from __future__ import annotations

import pytest
import torch
from conftest import fit, small_module
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bpttlab import CopyTask, module
from bpttlab.cli.progress import ProgressBar
from bpttlab.tasks import VALIDATION, batch_generator


@pytest.mark.parametrize("chunk", [7, 40, 1024])
def test_validation_in_chunks_scores_the_whole_sequence(monkeypatch, chunk):
    """Loss and accuracy of a float64 LSTM on copy (T = 40), validated ``chunk`` steps at a
    time, against cross-entropy and argmax written out over one whole-sequence forward."""
    monkeypatch.setattr(module, "VALIDATION_CHUNK", chunk)
    task = CopyTask(gap=20)
    seq = small_module(task, "lstm", hidden_size=8).double()
    batch = task.generate(16, batch_generator(0, VALIDATION, 0, "cpu"))

    with torch.no_grad():
        metrics = task.metrics_from(seq.metric_sums(batch))
        logits = seq.model(batch.inputs).outputs
    log_p = logits.log_softmax(-1).gather(-1, batch.targets[..., None])[..., 0]
    loss = -(log_p * batch.mask).sum() / batch.mask.sum()
    hits = (logits.argmax(-1) == batch.targets) & batch.scored
    assert metrics["loss"] == pytest.approx(loss.item(), rel=1e-12)
    assert metrics["accuracy"] == pytest.approx(hits.sum().item() / batch.scored.sum().item())
    assert metrics["normalized_loss"] == pytest.approx(loss.item() / task.baseline_loss, rel=1e-12)


def test_training_scalars_reach_tensorboard_at_optimiser_steps(tmp_path):
    """TBPTT(5) on copy (gap 6, 4 updates per batch), logging every batch: every training
    scalar is in the event file, read back by TensorBoard, at the optimiser step after each
    batch; the clipped fraction is a fraction and the losses agree with each other."""
    task = CopyTask(gap=6)
    seq = small_module(task, "gru", truncation=5)
    fit(seq, tmp_path, steps=12)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = ["loss", "normalized_loss", "grad_norm", "clipped", "clipped_fraction"]
    series = {tag: events.Scalars(f"train/{tag}") for tag in tags}
    per_batch = seq.updates_per_batch()
    assert per_batch > 1
    for tag, points in series.items():
        assert [p.step for p in points] == list(range(per_batch, 13, per_batch)), tag
    assert all(0.0 <= p.value <= 1.0 for p in series["clipped_fraction"])
    assert all(p.value > 0 for p in series["grad_norm"])
    for loss, normalized in zip(series["loss"], series["normalized_loss"], strict=True):
        assert normalized.value == pytest.approx(loss.value / task.baseline_loss, rel=1e-6)


def test_the_progress_bar_shows_step_loss_and_normalised_loss(tmp_path):
    """After training, the bar's metrics are the optimiser step and the last logged batch's
    loss and normalised loss, as the event file has them."""
    task = CopyTask(gap=6)
    seq = small_module(task, "gru")
    trainer = fit(seq, tmp_path, steps=5)
    shown = ProgressBar().get_metrics(trainer, seq)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    last = {tag: events.Scalars(f"train/{tag}")[-1].value for tag in ("loss", "normalized_loss")}
    assert shown["step"] == 5
    assert float(shown["loss"]) == pytest.approx(last["loss"], rel=1e-3)
    assert float(shown["norm_loss"]) == pytest.approx(last["normalized_loss"], rel=1e-2)
