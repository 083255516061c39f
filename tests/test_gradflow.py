"""GradientFlow: the logged ||dL/dh_k|| against independent computations, and what it writes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch
from conftest import fit, small_module
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bpttlab import AddingTask, Clipping, CopyTask, GradientFlow
from bpttlab.gradflow import load_profile, profile_summary
from bpttlab.tasks import TRAIN, batch_generator


def probe_once(tmp_path, module, **flow_args):
    """Fit one step with a probe at step 0 in float64; return the saved profile."""
    flow = GradientFlow(every_n_steps=1000, save_dir=str(tmp_path / "grad_flow"), **flow_args)
    fit(module, tmp_path, steps=1, callbacks=[flow], precision="64-true")
    return load_profile(tmp_path / "grad_flow" / "step_000000.npz")


def weights_of(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().double().clone() for k, v in module.state_dict().items()}


def output_delta(w, hidden, batch):
    """d(batch-sum cross-entropy)/d(logits), written out: B * (softmax - onehot) * mask / count."""
    logits = hidden @ w["model.readout.weight"].T + w["model.readout.bias"]
    onehot = torch.nn.functional.one_hot(batch.targets, logits.shape[-1]).double()
    mask = batch.mask.double()[..., None]
    return len(hidden) * (logits.softmax(-1) - onehot) * mask / batch.mask.sum()


def tanh_rnn_forward(w, batch) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The states h_t of a one-layer tanh RNN (hidden 6) in float64, written out, and the
    direct term of dL/dh_t (through the output at t alone)."""
    x = w["model.encoder.weight"][batch.inputs]
    W_ih, W_hh = w["model.layers.0.rnn.weight_ih_l0"], w["model.layers.0.rnn.weight_hh_l0"]
    bias = w["model.layers.0.rnn.bias_ih_l0"] + w["model.layers.0.rnn.bias_hh_l0"]
    h, hs = torch.zeros(len(x), 6, dtype=torch.float64), []
    for t in range(x.shape[1]):
        h = torch.tanh(x[:, t] @ W_ih.T + h @ W_hh.T + bias)
        hs.append(h)
    return hs, output_delta(w, torch.stack(hs, 1), batch) @ w["model.readout.weight"]


KERNELS = {
    "unrolled": {"kernel": "torch", "onednn": False},
    "bpttlab kernel": {"kernel": "bpttlab"},
}
"""How a probed step is traced: the step loop (torch's native kernel on the fast path) or
bpttlab's kernel, whose backward hands over every dL/dh_k."""


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("truncation", [None, 4])
def test_rnn_profile_matches_explicit_jacobian_chain(tmp_path, truncation, kernel):
    """tanh RNN: dL/dh_k = direct_k + J_{k+1}^T dL/dh_{k+1}, J = diag(1 - h_{k+1}^2) W_hh, the
    recursion cut where a truncation window starts; equals the logged profile to 1e-6."""
    task = CopyTask(gap=6)
    module = small_module(task, "rnn", truncation=truncation, lr=0.0, **KERNELS[kernel])
    w = weights_of(module)
    batch = task.generate(4, batch_generator(0, TRAIN, 0, "cpu"))
    profile = probe_once(tmp_path, module)["h_layer0"]

    hs, direct = tanh_rnn_forward(w, batch)
    W_hh = w["model.layers.0.rnn.weight_hh_l0"]
    starts = set(range(0, task.seq_len, truncation)) if truncation else {0}
    expected, g = np.zeros(task.seq_len), None
    for t in reversed(range(task.seq_len)):
        g = (
            direct[:, t]
            if g is None or (t + 1) in starts
            else direct[:, t] + (g * (1 - hs[t + 1] ** 2)) @ W_hh
        )
        expected[t] = g.norm(dim=-1).mean()
    np.testing.assert_allclose(profile, expected, rtol=1e-6, atol=1e-14)


@pytest.mark.parametrize("kernel", KERNELS)
def test_overlapping_windows_sum_their_gradients(tmp_path, kernel):
    """TBPTT(k1=2, k2=4): the windows overlap, so dL/dh_k is the sum over the windows that run
    step k of each window's own chain (direct terms inside its loss span, cut at its start),
    at the fixed weights of lr=0; the logged profile is the norm of that sum."""
    task = CopyTask(gap=6)
    module = small_module(task, "rnn", truncation=4, update_every=2, lr=0.0, **KERNELS[kernel])
    w = weights_of(module)
    batch = task.generate(4, batch_generator(0, TRAIN, 0, "cpu"))
    profile = probe_once(tmp_path, module)["h_layer0"]

    hs, direct = tanh_rnn_forward(w, batch)
    W_hh = w["model.layers.0.rnn.weight_hh_l0"]
    total = torch.zeros(task.seq_len, 4, 6, dtype=torch.float64)
    windows = [(max(ls - 2, 0), ls, min(ls + 2, task.seq_len)) for ls in range(0, task.seq_len, 2)]
    overlapped = 0
    for start, loss_start, end in windows:
        g = None
        for t in reversed(range(start, end)):
            own = direct[:, t] if t >= loss_start else torch.zeros(4, 6, dtype=torch.float64)
            g = own if g is None else own + (g * (1 - hs[t + 1] ** 2)) @ W_hh
            overlapped += bool(total[t].any() and g.any())
            total[t] += g
    assert overlapped > 0  # some step really gets gradients from two windows
    expected = total.norm(dim=-1).mean(dim=-1).numpy()
    np.testing.assert_allclose(profile, expected, rtol=1e-6, atol=1e-14)


@pytest.mark.parametrize(
    "kernel", [*KERNELS, "oneDNN"]
)  # oneDNN on the fast path: probes trace bpttlab's kernel
def test_lstm_profile_matches_zero_leaf_reference(tmp_path, kernel):
    """Two-layer LSTM: a hand-written forward with a zero leaf added to every h_k and c_k gives
    the total gradients by autograd; they equal the logged h and c profiles of both layers."""
    task = CopyTask(gap=5)
    options = {"onednn": True} if kernel == "oneDNN" else KERNELS[kernel]
    module = small_module(task, "lstm", num_layers=2, lr=0.0, **options)
    w = weights_of(module)
    batch = task.generate(4, batch_generator(0, TRAIN, 0, "cpu"))
    saved = probe_once(tmp_path, module)

    T, B, H = task.seq_len, 4, 6
    eps = {
        (kind, layer): torch.zeros(T, B, H, dtype=torch.float64, requires_grad=True)
        for kind in "hc"
        for layer in (0, 1)
    }
    layer_input = w["model.encoder.weight"][batch.inputs]
    for layer in (0, 1):
        W_ih, W_hh = (
            w[f"model.layers.{layer}.rnn.weight_ih_l0"],
            w[f"model.layers.{layer}.rnn.weight_hh_l0"],
        )
        bias = w[f"model.layers.{layer}.rnn.bias_ih_l0"] + w[f"model.layers.{layer}.rnn.bias_hh_l0"]
        h = c = torch.zeros(B, H, dtype=torch.float64)
        outputs = []
        for t in range(T):
            i, f, g, o = (layer_input[:, t] @ W_ih.T + h @ W_hh.T + bias).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g) + eps[("c", layer)][t]
            h = torch.sigmoid(o) * torch.tanh(c) + eps[("h", layer)][t]
            outputs.append(h)
        layer_input = torch.stack(outputs, 1)
    logits = layer_input @ w["model.readout.weight"].T + w["model.readout.bias"]
    losses = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), batch.targets, reduction="none"
    )
    loss_sum = B * (losses * batch.mask).sum() / batch.mask.sum()
    grads = torch.autograd.grad(loss_sum, list(eps.values()))
    for (kind, layer), grad in zip(eps, grads, strict=True):
        expected = grad.norm(dim=-1).mean(dim=-1).numpy()
        np.testing.assert_allclose(saved[f"{kind}_layer{layer}"], expected, rtol=1e-6, atol=1e-14)


def test_truncated_gradient_is_exactly_zero_beyond_the_window(tmp_path):
    """Adding task (loss at the last step only), truncation 4: no gradient reaches any state
    more than 4 steps back (exactly 0.0), and every state inside the window gets some."""
    task = AddingTask(gap=12)
    profile = probe_once(tmp_path, small_module(task, "lstm", truncation=4, lr=0.0))
    for name in ("h_layer0", "c_layer0"):
        assert np.all(profile[name][:8] == 0.0)
        assert np.all(profile[name][8:] > 0.0)
    assert list(profile["boundaries"]) == [4, 8]


@pytest.mark.parametrize(("kind", "kernel"), [("lstm", "unrolled"), *(("gru", k) for k in KERNELS)])
def test_probing_changes_no_number(tmp_path, kind, kernel):
    """Same seed: a run probed at every step (with the full-BPTT reference) and a run without
    the callback end with bitwise-identical parameters: the probed steps run the unrolled path,
    equal to torch's native kernel, or the same bpttlab kernel with sinks."""
    task = CopyTask(gap=4)
    probed = small_module(task, kind, truncation=5, **KERNELS[kernel])
    plain = small_module(task, kind, truncation=5, **KERNELS[kernel])
    flow = GradientFlow(every_n_steps=1, full_reference=True, save_dir=str(tmp_path / "gf"))
    fit(probed, tmp_path / "a", steps=20, callbacks=[flow])
    fit(plain, tmp_path / "b", steps=20)
    assert len(list((tmp_path / "gf").glob("*.npz"))) >= 4
    for (name, a), b in zip(probed.state_dict().items(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_full_reference_profile_and_cosine(tmp_path):
    """The full-BPTT reference of a truncated run equals the profile of a full-BPTT run at the
    same weights; the truncated/full cosine is below 1, and exactly 1 when nothing is cut."""
    task = CopyTask(gap=8)
    truncated = probe_once(
        tmp_path / "t", small_module(task, "gru", truncation=5, lr=0.0), full_reference=True
    )
    full = probe_once(tmp_path / "f", small_module(task, "gru", lr=0.0))
    np.testing.assert_allclose(truncated["full_h_layer0"], full["h_layer0"], rtol=1e-10)
    assert not np.allclose(truncated["h_layer0"], full["h_layer0"])
    probe_once(
        tmp_path / "u", small_module(task, "gru", truncation=100, lr=0.0), full_reference=True
    )
    cosines = {}
    for name, saved in (("cut", tmp_path / "t"), ("uncut", tmp_path / "u")):
        events = EventAccumulator(str(saved / "tensorboard"))
        events.Reload()
        cosines[name] = events.Scalars("z_grad_flow/truncation_cosine")[0].value
    assert -1.0 <= cosines["cut"] < 0.9999
    assert cosines["uncut"] == pytest.approx(1.0, abs=1e-6)


def test_per_timestep_clipping_is_seen_before_it_acts(tmp_path):
    """Under clip=timestep the profile records what arrives at h_k before it is clipped there:
    the last step (nothing later was clipped) matches an unclipped run; every earlier step
    receives a rescaled, hence smaller, delta."""
    task = AddingTask(gap=10)
    big = dict(kind="rnn", hidden_size=6, lr=0.0)
    clipped = probe_once(tmp_path / "c", small_module(task, clip=Clipping("timestep", 1e-3), **big))
    free = probe_once(tmp_path / "f", small_module(task, **big))
    assert clipped["h_layer0"][-1] == pytest.approx(free["h_layer0"][-1], rel=1e-12)
    assert free["h_layer0"][-1] > 1e-3
    assert np.all(clipped["h_layer0"][:-1] < free["h_layer0"][:-1])


def test_profile_summary_of_a_geometric_profile():
    """A profile 10^(-0.1 d), d the distance from the end: slope -0.1 per step, ratio
    10^(-0.1 (T-1)), and steps_in_past counts the steps within 3 decades (d < 30)."""
    T = 100
    profile = 10.0 ** (-0.1 * np.arange(T)[::-1])
    summary = profile_summary(profile, past_threshold=1e-3)
    assert summary["decay_per_step"] == pytest.approx(-0.1)
    assert summary["ratio"] == pytest.approx(10 ** (-0.1 * (T - 1)))
    assert summary["steps_in_past"] == pytest.approx(30 / T)


def flow_run(tmp_path, steps: int = 5, figures_every_n_steps: int = 1):
    """A small LSTM run probed every 2 steps."""
    module = small_module(CopyTask(gap=5), "lstm")
    flow = GradientFlow(
        every_n_steps=2,
        figures_every_n_steps=figures_every_n_steps,
        save_dir=str(tmp_path / "grad_flow"),
    )
    fit(module, tmp_path, steps=steps, callbacks=[flow])
    return tmp_path / "tensorboard"


def test_figures_are_drawn_less_often_than_probes(tmp_path):
    """Probes at 0, 2, 4, 6 with figures_every_n_steps=3: scalars and npz at every probe, figures
    at 0, at 4 (the first probe 3 or more steps after 0) and at 6 (the run's last probe, drawn
    when training ends)."""
    events = EventAccumulator(str(flow_run(tmp_path, 7, 3)), size_guidance={"images": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("z_grad_flow/h_layer0/first")] == [0, 2, 4, 6]
    assert len(list((tmp_path / "grad_flow").glob("step_*.npz"))) == 4
    for tag in ("z_grad_flow/profile", "z_grad_flow/heatmap/h_layer0"):
        assert [e.step for e in events.Images(tag)] == [0, 4, 6]


def test_event_files_hold_images_figures_and_scalars(tmp_path):
    """TensorBoard's own EventAccumulator reads back the heatmaps, the profile figure and the
    scalars, one image per probe, and no per-timestep tags."""
    events = EventAccumulator(str(flow_run(tmp_path)), size_guidance={"images": 0})
    events.Reload()
    images = set(events.Tags()["images"])
    assert {
        "z_grad_flow/heatmap/h_layer0",
        "z_grad_flow/heatmap/c_layer0",
        "z_grad_flow/profile",
    } <= images
    assert [e.step for e in events.Images("z_grad_flow/profile")] == [0, 2, 4]
    scalars = set(events.Tags()["scalars"])
    for name in ("h_layer0", "c_layer0"):
        for key in ("first", "last", "ratio", "decay_per_step", "steps_in_past"):
            assert f"z_grad_flow/{name}/{key}" in scalars
    assert len([t for t in scalars if t.startswith("z_grad_flow/")]) == 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_real_tensorboard_server_serves_grad_flow_tags(tmp_path):
    """Start a real `tensorboard` on 127.0.0.1, wait for it, find the grad_flow tags through its
    HTTP API, and stop it."""
    logdir = flow_run(tmp_path)
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(logdir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        images, scalars = {}, {}
        while time.monotonic() < deadline:
            try:
                images = json.load(
                    urllib.request.urlopen(f"{base}/data/plugin/images/tags", timeout=5)
                )
                scalars = json.load(
                    urllib.request.urlopen(f"{base}/data/plugin/scalars/tags", timeout=5)
                )
                if images and scalars:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        image_tags = {tag for run in images.values() for tag in run}
        scalar_tags = {tag for run in scalars.values() for tag in run}
        assert "z_grad_flow/profile" in image_tags and "z_grad_flow/heatmap/h_layer0" in image_tags
        assert "z_grad_flow/h_layer0/decay_per_step" in scalar_tags
    finally:
        server.terminate()
        server.wait(timeout=30)
