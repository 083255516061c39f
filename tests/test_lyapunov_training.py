"""Lyapunov spectra through training (the LyapunovSpectra callback with a real Trainer and
TensorBoard's own EventAccumulator) and gradient flossing (``module.flossing``)."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fit, small_module
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bpttlab import CopyTask
from bpttlab.gradflow.lyapunov import network_spectra
from bpttlab.gradflow.lyapunov_callback import LyapunovSpectra
from bpttlab.module.flossing import Flossing


def spectra_run(tmp_path, steps: int = 5):
    """A two-layer GRU with fixed weights (lr 0) measured every 2 steps."""
    module = small_module(CopyTask(gap=5), "gru", num_layers=2, lr=0.0)
    spectra = LyapunovSpectra(every_n_steps=2, k=3, warmup=2, save_dir=str(tmp_path / "lyap"))
    fit(module, tmp_path, steps=steps, callbacks=[spectra])
    return module


@pytest.mark.slow
def test_callback_logs_saves_and_draws_every_layer(tmp_path):
    module = spectra_run(tmp_path)
    files = sorted((tmp_path / "lyap").glob("step_*.npz"))
    assert [f.name for f in files] == [f"step_{s:06d}.npz" for s in (0, 2, 4)]
    with torch.no_grad():
        inputs = module.data.validation(0, module.device).inputs
        expected = torch.stack(network_spectra(module.model, inputs, 3, 1, 2)).numpy()
    with np.load(files[-1]) as saved:
        np.testing.assert_allclose(saved["exponents"], expected, rtol=1e-6)
        assert int(saved["step"]) == 4 and int(saved["warmup"]) == 2
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    for layer in (0, 1):
        leading = events.Scalars(f"lyapunov/layer{layer}/leading")
        total = events.Scalars(f"lyapunov/layer{layer}/sum_top_k")
        assert [e.step for e in leading] == [0, 2, 4]
        assert leading[-1].value == pytest.approx(expected[layer, 0], rel=1e-6)
        assert total[-1].value == pytest.approx(expected[layer].sum(), rel=1e-6)
        images = events.Images(f"lyapunov/spectrum/layer{layer}")
        assert [e.step for e in images] == [0, 2, 4]


def test_measuring_changes_no_number(tmp_path):
    """Same seed, with and without the callback: bitwise-equal weights after training."""
    measured = small_module(CopyTask(gap=5), "lstm")
    plain = small_module(CopyTask(gap=5), "lstm")
    spectra = LyapunovSpectra(every_n_steps=2, k=2, warmup=1, save_dir=str(tmp_path / "l"))
    fit(measured, tmp_path / "a", steps=4, callbacks=[spectra])
    fit(plain, tmp_path / "b", steps=4)
    assert len(list((tmp_path / "l").glob("*.npz"))) == 2
    for (name, a), b in zip(
        measured.state_dict().items(), plain.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_off_by_default(tmp_path):
    spectra = LyapunovSpectra(save_dir=str(tmp_path / "l"))
    fit(small_module(CopyTask(gap=5), "rnn"), tmp_path, steps=3, callbacks=[spectra])
    assert not (tmp_path / "l").exists()


# -- gradient flossing ------------------------------------------------------------------------


def tanh_rnn(gain: float, **flossing) -> torch.nn.Module:
    module = small_module(CopyTask(gap=10), "rnn", hidden_size=16, lr=0.0)
    module.flossing = Flossing(**flossing)
    module.optimizer_factory = functools.partial(torch.optim.Adam, lr=3e-2)
    with torch.no_grad():
        module.model.layers[0].rnn.weight_hh_l0.mul_(gain)
    return module


FLOSSED_TOLERANCE = 0.1  # nats per timestep


@pytest.mark.slow
def test_flossing_before_training_brings_the_top_exponents_to_zero(tmp_path):
    """A strongly contracting tanh RNN (W_hh scaled by 0.3: exponents near -1.7): after 60
    flossing-only steps (Adam, lr 3e-2), where the callback measures step 0 before any training
    update, its top 3 exponents on the validation sequences are within FLOSSED_TOLERANCE of 0."""
    k, gain = 3, 0.3
    spectra = LyapunovSpectra(every_n_steps=1, k=k, warmup=5, save_dir=str(tmp_path / "l"))
    module = tanh_rnn(gain, k=k, steps_before=60)
    fit(module, tmp_path, steps=1, callbacks=[spectra])
    with np.load(tmp_path / "l" / "step_000000.npz") as saved:
        flossed = saved["exponents"][0]
    assert module.flossed_before == 60
    assert np.abs(flossed).max() < FLOSSED_TOLERANCE, flossed
    plain = tanh_rnn(gain)
    with torch.no_grad():
        inputs = plain.data.validation(0, plain.device).inputs
        before = network_spectra(plain.model, inputs, k, 1, 5)[0]
    assert before.max() < -5 * FLOSSED_TOLERANCE, before
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    first = events.Scalars("flossing/before_first_loss")[0].value
    assert events.Scalars("flossing/before_last_loss")[0].value < first / 10


def test_flossing_gradient_equals_a_finite_difference():
    """d/dtheta of the flossing loss of a two-layer tanh RNN (float64, the upper layer driven by
    the lower one) against central differences along a random direction of all parameters."""
    module = small_module(CopyTask(gap=4), "rnn", hidden_size=5, num_layers=2)
    model = module.model.double()
    flossing = Flossing(k=2)
    inputs = module.data.train(0, "cpu").inputs[:3]
    params = list(model.parameters())
    generator = torch.Generator().manual_seed(5)
    direction = [torch.randn(p.shape, generator=generator, dtype=torch.float64) for p in params]
    grads = torch.autograd.grad(flossing.loss(model, inputs), params, allow_unused=True)
    analytic = sum((g * d).sum() for g, d in zip(grads, direction, strict=True) if g is not None)
    eps = 1e-6

    def shifted(scale: float) -> torch.Tensor:
        with torch.no_grad():
            for p, d in zip(params, direction, strict=True):
                p.add_(scale * d)
            loss = flossing.loss(model, inputs)
            for p, d in zip(params, direction, strict=True):
                p.sub_(scale * d)
        return loss

    finite = (shifted(eps) - shifted(-eps)) / (2 * eps)
    assert float(analytic) == pytest.approx(float(finite), rel=1e-6)


def test_flossing_during_training_joins_the_update(tmp_path):
    """With SGD, the first update of a flossed step is -lr (task gradient + weight x flossing
    gradient), both computed here by autograd at the initial weights; an unflossed step (after
    until_step) would differ."""
    lr, weight = 0.1, 0.5
    module = small_module(CopyTask(gap=4), "rnn", hidden_size=5, lr=lr)
    module.flossing = Flossing(weight=weight, k=2, until_step=1)
    start = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    batch = module.train_batch(0)
    params = list(module.model.parameters())
    outputs = module.model(batch.inputs).outputs
    task_loss = module.task.position_losses(outputs, batch).sum() / batch.mask.sum()
    task_grads = torch.autograd.grad(task_loss, params, allow_unused=True)
    floss_grads = torch.autograd.grad(
        weight * module.flossing.loss(module.model, batch.inputs), params, allow_unused=True
    )
    fit(module, tmp_path, steps=1)
    for (name, p), g_task, g_floss in zip(
        module.model.named_parameters(), task_grads, floss_grads, strict=True
    ):
        total = sum(g for g in (g_task, g_floss) if g is not None)
        expected = start[name] - lr * (total if isinstance(total, torch.Tensor) else 0.0)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-4, atol=1e-6, msg=name)
    assert any(g is not None and g.abs().sum() > 0 for g in floss_grads)


@pytest.mark.slow
def test_command_line_run_saves_spectra_in_the_run_dir(tmp_path):
    """`bpttlab-train` with the callback on and flossing before training: spectra in
    <run_dir>/lyapunov, their scalars and the flossing losses in the run's event files."""
    cli = str(Path(sys.executable).parent / "bpttlab-train")
    args = ["cell=rnn", "cell.hidden_size=8", "module.batch_size=4", "module.val_batches=1"]
    args += ["task=copy", "task.gap=5", "trainer.max_steps=3", "~callbacks.grad_flow"]
    args += ["callbacks.lyapunov.every_n_steps=2", "callbacks.lyapunov.warmup=3"]
    args += ["module.flossing.steps_before=3", "module.flossing.k=2"]
    result = subprocess.run([cli, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (run_dir,) = (tmp_path / "outputs" / "runs").glob("*/*")
    saved = sorted(p.name for p in (run_dir / "lyapunov").glob("step_*.npz"))
    assert saved == ["step_000000.npz", "step_000002.npz"]
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert [e.step for e in events.Scalars("lyapunov/layer0/leading")] == [0, 2]
    assert len(events.Scalars("flossing/before_last_loss")) == 1


@pytest.mark.slow
def test_report_draws_the_spectra_of_a_sweep_over_seeds(tmp_path):
    """Two seeds measured at steps 0 and 1: bpttlab-report's spectra.png, from each step's
    leading exponents of layer 0 as the seeds' npz files hold them."""
    cli = str(Path(sys.executable).parent / "bpttlab-train")
    args = ["-m", "seed=0,1", "cell=gru", "cell.hidden_size=8", "module.batch_size=4"]
    args += ["module.val_batches=1", "task=copy", "task.gap=5", "trainer.max_steps=2"]
    args += ["~callbacks.grad_flow", "callbacks.lyapunov.every_n_steps=1", "hydra.sweep.dir=sweep"]
    result = subprocess.run([cli, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    from bpttlab.analysis.report import report
    from bpttlab.analysis.spectra import leading_exponents
    from bpttlab.analysis.sweep import group_runs, read_runs

    out = report(tmp_path / "sweep")
    assert (out / "spectra.png").stat().st_size > 0
    (group,) = group_runs(read_runs(tmp_path / "sweep"))
    steps, matrix = leading_exponents(group)
    saved = [
        float(np.load(run.path / "lyapunov" / f"step_{s:06d}.npz")["exponents"][0, 0])
        for run in group.finished
        for s in (0, 1)
    ]
    assert steps == [0, 1] and matrix.shape == (2, 2)
    assert sorted(matrix.ravel().tolist()) == sorted(saved)
