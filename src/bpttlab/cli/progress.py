"""The progress bar: Lightning's, showing the optimiser step and the last logged training loss
and normalised loss, which SequenceModule keeps in ``progress`` (it writes its training scalars
to TensorBoard itself, not through Lightning's logging)."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar


class ProgressBar(TQDMProgressBar):
    """TQDMProgressBar with the step, loss and normalised loss of the module's last logging
    batch (and, after a validation, Lightning's validation metrics marked for the bar)."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return {"step": trainer.global_step, **getattr(pl_module, "progress", {}), **metrics}
