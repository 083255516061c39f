"""The two training paths the benchmarks compare, doing the same work: bpttlab's (a real
``lightning.Trainer`` fitting a ``SequenceModule``, logging to TensorBoard) and a hand-written
PyTorch loop (the same weights, batches, BPTT windows, loss, clipping and optimiser, and
PyTorch's fastest LSTM kernel on CPU, oneDNN's); and the configuration they run."""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass, field, replace
from functools import partial

import lightning as L
import torch
from bench_protocol import SEED
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from bpttlab import BPTT, AddingTask, Clipping, GradientFlow, RecurrentNet, SequenceModule, Window
from bpttlab.cells.torch_recurrence import onednn
from bpttlab.tasks import TRAIN, batch_generator

LR = 3e-3
LOG_EVERY = 10  # conf/trainer/default.yaml

Weights = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Config:
    """What the benchmark runs; FULL is the reported configuration."""

    cell: str = "lstm"  # section 2 may take gru (the others are written for the LSTM)
    clip: float = 1.0  # gradient-norm clipping threshold
    seq_len: int = 200  # adding task gap T
    hidden: int = 128
    embedding: int = 32
    batch: int = 64
    truncation: int = 20
    check_batches: int = 3  # equivalence check before timing
    warmup_batches: int = 3
    batches_full: int = 10  # per timed run, full BPTT
    batches_truncated: int = 60  # per timed run, truncation (1.2 s: shorter runs were noisy)
    repeats: int = 5  # timed runs per implementation, sections 1 and 3
    gradflow_batches: int = 150
    gradflow_every: int = 10
    gradflow_repeats: int = 5  # whole runs of 7-8 s moved by +-0.3 s: 3 gave 0.93-1.00
    kernel_warmup: int = 2


FULL = Config()
QUICK = Config(
    seq_len=40,
    hidden=32,
    embedding=8,
    batch=16,
    truncation=10,
    batches_full=3,
    batches_truncated=3,
    warmup_batches=1,
    repeats=2,
    gradflow_batches=10,
    gradflow_every=5,
    gradflow_repeats=3,
    kernel_warmup=1,
)


def config_from(args: argparse.Namespace) -> Config:
    """FULL or QUICK, with the options given on the command line (those this script takes)."""
    cfg = QUICK if args.quick else FULL
    if args.repeats:
        cfg = replace(cfg, repeats=args.repeats, gradflow_repeats=args.repeats)
    changes = {
        "clip": getattr(args, "clip_threshold", None),
        "gradflow_every": getattr(args, "probe_every", None),
        "cell": getattr(args, "cell", None),
    }
    return replace(cfg, **{key: value for key, value in changes.items() if value})


# -- the model ------------------------------------------------------------------------------
CELL_DEFAULTS = {
    "lstm": {"onednn": True},  # conf/cell/lstm.yaml: PyTorch's fastest LSTM kernel on CPU
    "gru": {"kernel": "bpttlab"},  # conf/cell/gru.yaml: bpttlab's GRU kernel
}


def make_model(task: AddingTask, cfg: Config) -> RecurrentNet:
    return RecurrentNet(
        input_size=task.input_size,
        output_size=task.output_size,
        token_input=task.token_input,
        kind=cfg.cell,
        hidden_size=cfg.hidden,
        embedding_dim=cfg.embedding,
        **CELL_DEFAULTS[cfg.cell],
    )


def initial_weights(cfg: Config) -> Weights:
    torch.manual_seed(SEED)
    return make_model(AddingTask(gap=cfg.seq_len), cfg).state_dict()


# -- bpttlab's training path ----------------------------------------------------------------
@dataclass
class Timing:
    loop: float  # seconds of the training loop, on_train_start to on_train_end
    fit: float  # seconds of the whole Trainer.fit call
    batches: list[float]  # seconds of each batch, on_train_batch_start to on_train_batch_end
    probed: list[bool]  # whether GradientFlow probed each batch
    probes: list[int] = field(default_factory=list)  # steps GradientFlow probed


class LoopTimer(L.Callback):
    """Time the training loop (on_train_start to on_train_end) and each batch in it.

    Listed after the other callbacks, so a batch's time includes their on_train_batch_end.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: SequenceModule) -> None:
        self.batches: list[float] = []
        self.steps: list[int] = []
        self.start = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module: SequenceModule, batch, batch_idx) -> None:
        self.steps.append(trainer.global_step)
        self.batch_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches.append(time.perf_counter() - self.batch_start)

    def on_train_end(self, trainer: L.Trainer, pl_module: SequenceModule) -> None:
        self.seconds = time.perf_counter() - self.start


def make_module(cfg: Config, truncation: int | None, weights: Weights) -> SequenceModule:
    task = AddingTask(gap=cfg.seq_len)
    model = make_model(task, cfg)
    model.load_state_dict(weights)
    return SequenceModule(
        model,
        task,
        optimizer=partial(torch.optim.Adam, lr=LR),
        bptt=BPTT(truncation=truncation),
        clipping=Clipping(mode="norm", threshold=cfg.clip),
        batch_size=cfg.batch,
        seed=SEED,
        stop_when_solved=False,
    )


def fit_bpttlab(
    module: SequenceModule, batches: int, root: str, callbacks: tuple[L.Callback, ...] = ()
) -> Timing:
    """Fit ``module`` for ``batches`` batches with a real Trainer logging to TensorBoard."""
    timer = LoopTimer()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=batches * module.updates_per_batch(),
        max_epochs=-1,
        logger=TensorBoardLogger(root, name="tensorboard", version="", default_hp_metric=False),
        callbacks=[*callbacks, timer],
        log_every_n_steps=LOG_EVERY,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    start = time.perf_counter()
    trainer.fit(module)
    fit = time.perf_counter() - start
    if module.batches != batches:
        raise RuntimeError(f"bpttlab trained {module.batches} batches, not {batches}")
    probed = {step for c in callbacks if isinstance(c, GradientFlow) for step in c.probed_steps}
    return Timing(timer.seconds, fit, timer.batches, [s in probed for s in timer.steps])


def run_bpttlab(
    cfg: Config, truncation: int | None, weights: Weights, batches: int, gradflow: bool = False
) -> Timing:
    """A fresh module from ``weights``, fitted for ``batches`` batches (GradientFlow or not)."""
    module = make_module(cfg, truncation, weights)
    with tempfile.TemporaryDirectory() as root:
        if not gradflow:
            return fit_bpttlab(module, batches, root)
        flow = GradientFlow(every_n_steps=cfg.gradflow_every, save_dir=f"{root}/grad_flow")
        timing = fit_bpttlab(module, batches, root, (flow,))
        timing.probes = list(flow.probed_steps)
        return timing


# -- the same work in plain PyTorch ---------------------------------------------------------
def train_plain(
    model: RecurrentNet,
    task: AddingTask,
    windows: list[Window],
    batches: int,
    batch_size: int,
    clip: float,
) -> float:
    """Train ``model`` by hand for ``batches`` batches; return the loop's seconds.

    Calls the model's encoder, nn.LSTM and readout directly (no SequenceModule code). One
    optimiser step per window that holds targets, and the step count seeds the next batch, as
    Lightning's global step does; windows without targets only carry the state forward, in one
    call up to the next window with targets.
    """
    if any(w.carry != w.end for w in windows):
        raise ValueError("the plain loop handles disjoint windows (update_every = truncation)")
    parameters = list(model.parameters())
    optimizer = torch.optim.Adam(parameters, lr=LR)
    step = 0
    start = time.perf_counter()
    for _ in range(batches):
        batch = task.generate(batch_size, batch_generator(SEED, TRAIN, step, "cpu"))
        total = batch.mask.sum()
        state, carry_from = None, None
        for w in windows:
            mask = batch.mask[:, w.loss_start : w.end]
            if not mask.any():  # as bpttlab does (run_windows): run at the next window's start
                carry_from = w.start if carry_from is None else carry_from
                continue
            if carry_from is not None:  # the windows without targets, as one, no readout
                with torch.no_grad():
                    x = model.encoder(batch.inputs[:, carry_from : w.start])
                    with onednn(True):
                        state = model.layers[0].rnn(x, state)[1]
                carry_from = None
            x = model.encoder(batch.inputs[:, w.start : w.end])
            with onednn(True):
                hidden, carried = model.layers[0].rnn(x, state)
            outputs = model.readout(hidden)[:, w.loss_start - w.start :, 0]
            targets = batch.targets[:, w.loss_start : w.end]
            loss = ((outputs - targets).square() * mask).sum() / total
            loss.backward()
            nn.utils.clip_grad_norm_(parameters, clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            state = tuple(s.detach() for s in carried)
    return time.perf_counter() - start


def run_plain(cfg: Config, truncation: int | None, weights: Weights, batches: int) -> float:
    """A fresh model from ``weights``, trained by hand for ``batches`` batches: seconds."""
    task = AddingTask(gap=cfg.seq_len)
    model = make_model(task, cfg)
    model.load_state_dict(weights)
    windows = BPTT(truncation).windows(task.seq_len)
    return train_plain(model, task, windows, batches, cfg.batch, cfg.clip)


# -- both paths do the same work ------------------------------------------------------------
def setting_name(truncation: int | None) -> str:
    return "full BPTT" if truncation is None else f"truncation {truncation}"


def check_same_training(cfg: Config, truncation: int | None, weights: Weights) -> float:
    """Train a few batches both ways from the same weights; abort unless the parameters agree.

    Returns the largest absolute parameter difference.
    """
    module = make_module(cfg, truncation, weights)
    with tempfile.TemporaryDirectory() as root:
        fit_bpttlab(module, cfg.check_batches, root)
    task = AddingTask(gap=cfg.seq_len)
    plain = make_model(task, cfg)
    plain.load_state_dict(weights)
    train_plain(plain, task, module.windows, cfg.check_batches, cfg.batch, cfg.clip)
    pairs = list(zip(module.model.named_parameters(), plain.parameters(), strict=True))
    differ = {name: (a - b).abs().max().item() for (name, a), b in pairs}
    if not all(torch.allclose(a, b, rtol=0, atol=1e-6) for (_, a), b in pairs):
        raise SystemExit(
            f"bench: after {cfg.check_batches} batches ({setting_name(truncation)}) bpttlab and "
            "the plain loop hold different parameters (max |difference| "
            + ", ".join(f"{name} {d:.2g}" for name, d in differ.items())
            + "): they do not do the same work, so their timings cannot be compared"
        )
    return max(differ.values())
