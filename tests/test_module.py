"""SequenceModule's validation: run in chunks of time, scored as the whole sequence would be."""

from __future__ import annotations

import pytest
import torch
from conftest import small_module

from bpttlab import CopyTask, module
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
