"""SequenceModule: a LightningModule that trains a RecurrentNet on a Task with full or
truncated BPTT and gradient clipping, by manual optimisation (Lightning 2.x has no TBPTT).

Batches are generated on the module's device from seeds derived from (seed, global step), so a
run is reproducible and resumable, and training and validation seeds never overlap. On a step
that a callback has marked for probing (``request_probe``), the unrolled path runs instead of
the fused one and the gradient flowing into every hidden state is kept in ``probe``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from functools import partial

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from bpttlab.bptt import BPTT, Window
from bpttlab.clipping import Clipping
from bpttlab.model import RecurrentNet, State, Trace, detach_state
from bpttlab.tasks import TRAIN, VALIDATION, Batch, Task, batch_generator
from bpttlab.validation import integer

OptimizerFactory = Callable[..., torch.optim.Optimizer]


class Probe:
    """Gradients of one probed training step, recorded by tensor hooks during its backward.

    ``grads[(kind, layer)]`` is a (T, B, H) tensor: the gradient of the batch-mean training loss
    that flowed into state ``kind`` ("h", or "c" for LSTM) of ``layer`` at each timestep, before
    any per-timestep clipping at that timestep; under TBPTT, summed over the windows that hold
    the timestep; zero where no gradient arrived.
    """

    def __init__(self, step: int, batch_size: int, seq_len: int):
        self.step = step
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.grads: dict[tuple[str, int], Tensor] = {}

    def hook(self, trace: Trace, offset: int) -> None:
        """Record the gradient of every state of ``trace``, whose first step is ``offset``."""
        for kind, layer, t, state in trace.states():
            state.register_hook(partial(self._record, kind, layer, offset + t))

    def _record(self, kind: str, layer: int, t: int, grad: Tensor) -> None:
        buffer = self.grads.get((kind, layer))
        if buffer is None:
            buffer = self.grads[(kind, layer)] = grad.new_zeros(self.seq_len, *grad.shape)
        buffer[t] += grad


class SequenceModule(L.LightningModule):
    """Train ``model`` on ``task``.

    Args:
        model: the network (its fused and unrolled paths share weights).
        task: the sequence task that generates batches and scores outputs.
        optimizer: a factory ``params -> Optimizer`` (a Hydra ``_partial_``).
        bptt: full or truncated BPTT schedule.
        clipping: gradient clipping.
        batch_size: sequences per training batch.
        val_batches: fixed validation batches of ``batch_size`` sequences.
        seed: seeds the batches (weights are seeded by the caller).
        stop_when_solved: stop training at the first validation that solves the task.
    """

    def __init__(
        self,
        model: RecurrentNet,
        task: Task,
        optimizer: OptimizerFactory,
        bptt: BPTT | None = None,
        clipping: Clipping | None = None,
        batch_size: int = 64,
        val_batches: int = 4,
        seed: int = 0,
        stop_when_solved: bool = True,
    ):
        super().__init__()
        self.automatic_optimization = False
        self.model = model
        self.task = task
        self.optimizer_factory = optimizer
        self.bptt = bptt or BPTT()
        self.clipping = clipping or Clipping(mode="none")
        self.batch_size = integer("module.batch_size", batch_size, 1)
        self.val_batches = integer("module.val_batches", val_batches, 1)
        self.seed = seed
        self.stop_when_solved = stop_when_solved
        self.windows = self.bptt.windows(task.seq_len)
        self.probe_requested = False
        self.probe: Probe | None = None
        self.batches = 0
        self.updates = 0
        self.clipped_updates = 0
        self.val_metrics: dict[str, float] = {}
        self.val_step: int | None = None
        self.solved_at_step: int | None = None
        self.diverged_at_step: int | None = None
        self._val_cache: list[Batch] = []

    # -- data --------------------------------------------------------------------------------
    def train_batch(self, index: int) -> Batch:
        """Training batch ``index`` (the global step at which it is drawn)."""
        generator = batch_generator(self.seed, TRAIN, index, self.device)
        return self.task.generate(self.batch_size, generator)

    def val_batch(self, index: int) -> Batch:
        """Fixed validation batch ``index``, generated once per device."""
        if len(self._val_cache) <= index or self._val_cache[index].inputs.device != self.device:
            self._val_cache = [
                self.task.generate(
                    self.batch_size, batch_generator(self.seed, VALIDATION, i, self.device)
                )
                for i in range(self.val_batches)
            ]
        return self._val_cache[index]

    def updates_per_batch(self) -> int:
        """Optimiser steps per batch: one per window that holds targets."""
        mask = self.task.generate(1, batch_generator(self.seed, TRAIN, 0, "cpu")).mask[0]
        return sum(bool(mask[w.loss_start : w.end].any()) for w in self.windows)

    def train_dataloader(self) -> DataLoader:
        # Batches are made on the device in training_step; the loader only paces the loop.
        max_steps = self.trainer.max_steps if self.trainer.max_steps > 0 else 10**6
        return DataLoader(range(math.ceil(max_steps / self.updates_per_batch())), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(range(self.val_batches), batch_size=None)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.model.parameters())

    # -- training ----------------------------------------------------------------------------
    def request_probe(self) -> None:
        """Run the next training step on the unrolled path and keep its state gradients."""
        self.probe_requested = True

    def training_step(self, _index: int, _batch_idx: int) -> None:
        step = self.global_step
        batch = self.train_batch(step)
        probing, self.probe_requested = self.probe_requested, False
        self.probe = Probe(step, self.batch_size, self.task.seq_len) if probing else None
        optimizer = self.optimizers()
        loss_sum, norm_sum, clipped, updates = 0.0, 0.0, 0, 0
        for loss in self.backward_windows(batch, self.windows, self.probe):
            norm, was_clipped = self.clipping.clip_parameters(self.model.parameters())
            if not (torch.isfinite(loss) and torch.isfinite(norm)):
                self._diverge(step)
                return
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach()
            norm_sum += norm
            clipped += was_clipped
            updates += 1
        self.batches += 1
        self.updates += updates
        self.clipped_updates += clipped
        if self.batches % self.trainer.log_every_n_steps == 0:  # the batches Lightning writes
            self._log_training(loss_sum, norm_sum / updates, clipped / updates)

    def _log_training(self, loss: Tensor, grad_norm: Tensor, clipped: float) -> None:
        self.log_dict(
            {"train/loss": loss, "train/normalized_loss": loss / self.task.baseline_loss},
            prog_bar=True,
        )
        self.log_dict(
            {
                "train/grad_norm": grad_norm,
                "train/clipped": clipped,
                "train/clipped_fraction": self.clipped_updates / self.updates,
                "step": float(self.global_step),  # TensorBoard's x-axis: optimiser steps
            }
        )

    def backward_windows(
        self, batch: Batch, windows: list[Window], probe: Probe | None = None
    ) -> Iterator[Tensor]:
        """Run ``windows`` over ``batch`` in order, backpropagating each window's loss.

        Yields each window's loss after its backward, so the caller can clip and step before
        the next window runs (TBPTT) or let the gradients add up (a gradient at fixed weights).
        Window losses are normalised by the whole batch's target count, so they add up to the
        task's loss. A non-finite loss is yielded without a backward.
        """
        unrolled = probe is not None or self.clipping.needs_unrolled
        total_weight = batch.mask.sum()
        state: State | None = None
        for window in windows:
            targets = batch.slice(window.loss_start, window.end)
            if not targets.mask.any():  # nothing to learn here: carry the state only
                with torch.no_grad():
                    state = self._run(batch.inputs, state, window, unrolled=False)[1]
                continue
            outputs, carried, traces = self._run(batch.inputs, state, window, unrolled)
            for offset, trace in traces:
                if probe is not None:
                    probe.hook(trace, offset)
                self.clipping.hook_timesteps(trace, self.batch_size)
            outputs = outputs[:, window.loss_start - window.start :]
            loss = self.task.position_losses(outputs, targets).sum() / total_weight
            if torch.isfinite(loss):
                self.manual_backward(loss)
            yield loss
            state = carried

    def _run(
        self, inputs: Tensor, state: State | None, window: Window, unrolled: bool
    ) -> tuple[Tensor, State | None, list[tuple[int, Trace]]]:
        """Run ``window`` from the detached ``state``: (outputs, state at ``carry``, traces)."""
        state = detach_state(state)
        outputs, traces, carried = [], [], state
        for start, end in ((window.start, window.carry), (window.carry, window.end)):
            if end <= start:
                continue
            out, state, trace = self.model(inputs[:, start:end], state, unrolled=unrolled)
            outputs.append(out)
            if trace is not None:
                traces.append((start, trace))
            if end == window.carry:
                carried = state
        return torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0], carried, traces

    def _diverge(self, step: int) -> None:
        """A non-finite loss or gradient ends the run as a result, not a crash."""
        self.optimizers().zero_grad(set_to_none=True)
        self.diverged_at_step = step
        self.log_dict({"train/diverged": 1.0, "step": float(step)})
        self.trainer.should_stop = True

    # -- validation --------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_outputs: list[tuple[Tensor, Batch]] = []

    def validation_step(self, index: int, _batch_idx: int) -> None:
        batch = self.val_batch(index)
        outputs = self.model(batch.inputs)[0]
        self._val_outputs.append((outputs, batch))

    def on_validation_epoch_end(self) -> None:
        outputs = torch.cat([o for o, _ in self._val_outputs])
        batch = Batch.concat([b for _, b in self._val_outputs])
        self._val_outputs = []
        metrics = self.task.metrics(outputs, batch)
        self.val_metrics = metrics
        self.val_step = self.global_step
        self.log_dict(
            {f"val/{k}": v for k, v in metrics.items()} | {"step": float(self.global_step)}
        )
        if self.trainer.sanity_checking:
            return
        if metrics["solved"] and self.solved_at_step is None:
            self.solved_at_step = self.global_step
        if metrics["solved"] and self.stop_when_solved:
            self.trainer.should_stop = True

    # -- checkpoints -------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["bpttlab"] = {
            "batches": self.batches,
            "updates": self.updates,
            "clipped_updates": self.clipped_updates,
            "solved_at_step": self.solved_at_step,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("bpttlab", {})
        self.batches = saved.get("batches", 0)
        self.updates = saved.get("updates", 0)
        self.clipped_updates = saved.get("clipped_updates", 0)
        self.solved_at_step = saved.get("solved_at_step")
