"""The GPU path (cuDNN for rnn/lstm/gru, the scans of the other cells, trainer.accelerator=gpu)
for every registered cell. Skipped where no GPU is present, as on CI."""

from __future__ import annotations

import pytest
import torch
from conftest import fit, small_module
from lightning.pytorch.callbacks import LambdaCallback

from bpttlab import CopyTask, RecurrentNet
from bpttlab.cells import CELLS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_fast_path_matches_unrolled_on_gpu(kind):
    """On the GPU the fast path (cuDNN's kernel, or a cell's scan) equals the unrolled path
    within float rounding (float64: 1e-6), outputs and parameter gradients."""
    torch.manual_seed(0)
    model = RecurrentNet(10, 9, kind=kind, hidden_size=16, num_layers=2).double().cuda()
    x = torch.randint(0, 10, (4, 30), device="cuda")
    results = []
    for unrolled in (False, True):
        model.zero_grad()
        out = model(x, unrolled=unrolled)[0]
        out.square().sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    (out_f, grads_f), (out_u, grads_u) = results
    torch.testing.assert_close(out_f, out_u, atol=1e-6, rtol=1e-6)
    for a, b in zip(grads_f, grads_u, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_training_on_gpu(tmp_path, kind):
    """A real Trainer with accelerator=gpu trains on the GPU and draws its batches there
    (observed during training: Lightning moves the module back to the CPU at the end)."""
    seen = []

    def observe(trainer, module, *_):
        seen.append((module.device.type, module.train_batch(0).inputs.device.type))

    module = small_module(CopyTask(gap=5), kind)
    recorder = LambdaCallback(on_train_batch_end=observe)
    trainer = fit(module, tmp_path, steps=5, accelerator="gpu", callbacks=[recorder])
    assert trainer.global_step == 5 and seen == [("cuda", "cuda")] * 5
