"""`RunCheckpoint`: Lightning's ModelCheckpoint, with last.ckpt written at every validation.

Lightning 2.6 writes `last.ckpt` only when a top-k checkpoint was written at the same step, so with
`save_top_k: 1` a run whose val/loss stops improving keeps a stale last.ckpt, and a resume after a
crash repeats every step since the last improvement (seen in bench/soak.py: the last.ckpt of a
3000-step run held step 2950).
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint


class RunCheckpoint(ModelCheckpoint):
    @property
    def state_key(self) -> str:
        # ModelCheckpoint's key: checkpoints written before this class resume with their top-k state.
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        # Skipped when the step was already saved (then last.ckpt came with the new best), and when
        # the monitored value is NaN/inf: a diverged model must not overwrite the last good last.ckpt.
        candidates = self._monitor_candidates(trainer)
        value = candidates.get(self.monitor) if self.monitor else None
        if value is not None and not torch.isfinite(torch.as_tensor(value)).all():
            return
        if self.save_last and not self._should_skip_saving_checkpoint(trainer) \
                and not self._should_save_on_train_epoch_end(trainer):
            self._save_last_checkpoint(trainer, candidates)
