"""Gradient flossing (Engelken 2023, "Gradient flossing: improving gradient descent through
dynamic control of Jacobians", arXiv 2312.17306): drive the leading Lyapunov exponents of every
layer toward zero, so that perturbations, and with them gradients, neither vanish nor explode
along the task's sequences.

The flossing loss of a batch is sum over layers and i <= k of lambda_i^2, the exponents of
``gradflow.lyapunov.network_spectra`` along the batch's whole input sequences (a QR every
timestep, no warm-up), differentiated through ``torch.linalg.qr``. Two uses:

- before training, ``steps_before`` optimiser steps on the flossing loss alone (the training
  batches of steps 0, 1, ... as inputs; a fresh optimiser of the run's kind, so that training
  starts with the optimiser's state untouched);
- during training, ``weight`` x the flossing loss added to the first update of every
  ``every_n_steps``-th training step before ``until_step``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from bpttlab import checks
from bpttlab.gradflow.lyapunov import network_spectra
from bpttlab.module.scalars import log_scalars


def non_negative(key: str, value: object) -> float:
    """``value`` as a finite float >= 0, else a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise checks.ConfigError(key, value, "a finite number >= 0")
    return float(value)


class Flossing:
    """Gradient flossing settings and its loss (see the module docstring).

    Args:
        weight: weight of the flossing loss during training, >= 0; 0: no flossing in training.
        k: exponents per layer pushed toward zero, >= 1.
        steps_before: flossing-only optimiser steps before training, >= 0.
        every_n_steps: during training, floss on every n-th training step, >= 1.
        until_step: during training, floss only before this optimiser step; None: throughout.
    """

    def __init__(
        self,
        weight: float = 0.0,
        k: int = 1,
        steps_before: int = 0,
        every_n_steps: int = 1,
        until_step: int | None = None,
    ):
        try:  # errors name the key as the config spells it: flossing.k
            self.weight = non_negative("weight", weight)
            self.k = checks.integer("k", k, 1)
            self.steps_before = checks.integer("steps_before", steps_before, 0)
            self.every_n_steps = checks.integer("every_n_steps", every_n_steps, 1)
            self.until_step = checks.integer("until_step", until_step, 0, optional=True)
        except checks.ConfigError as error:
            raise error.under("flossing") from None

    def loss(self, model, inputs: Tensor) -> Tensor:
        """sum over layers and i <= k of lambda_i^2 along ``inputs``, differentiable."""
        return sum(spectrum.square().sum() for spectrum in network_spectra(model, inputs, self.k))

    def due(self, step: int) -> bool:
        """Whether training step ``step`` adds the flossing loss."""
        if self.weight == 0 or step % self.every_n_steps:
            return False
        return self.until_step is None or step < self.until_step

    def add_gradient(self, module, step: int, inputs: Tensor) -> None:
        """On a step that is ``due``, backpropagate ``weight`` x the flossing loss along
        ``inputs`` into the gradients of a SequenceModule ``module``'s model."""
        if self.due(step):
            module.manual_backward(self.weight * self.loss(module.model, inputs))

    def before_training(self, module) -> list[float]:
        """``steps_before`` steps on the flossing loss alone of a SequenceModule ``module``'s
        model, on the inputs of its training batches 0, 1, ..., by a fresh optimiser from its
        factory, unless it has trained or flossed already (a resumed run); logs the first and
        last loss at step 0 and returns every step's loss. A non-finite loss ends them before
        its step."""
        if not self.steps_before or module.global_step or module.flossed_before:
            return []
        model = module.model
        optimizer = module.optimizer_factory(model.optimizer_groups())
        losses = []
        for i in range(self.steps_before):
            loss = self.loss(model, module.train_batch(i).inputs)
            if not torch.isfinite(loss):
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach().item())
        optimizer.zero_grad(set_to_none=True)
        if losses:
            scalars = {
                "flossing/before_first_loss": losses[0],
                "flossing/before_last_loss": losses[-1],
            }
            log_scalars(module.loggers, scalars, 0)
        return losses
