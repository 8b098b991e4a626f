"""What every pretraining/fine-tuning LightningModule shares: optimizer and schedule from plain
config dicts, the divergence check, and the tokenizer carried inside checkpoints.

Hyperparameters are plain values only (the dicts that build the network, optimizer and
schedule), so `Module.load_from_checkpoint(path)` rebuilds the module without Hydra.
"""

from __future__ import annotations

import lightning as L
import torch

from lmpretrain.errors import TrainingDivergedError
from lmpretrain.optim import build_optimizer, build_scheduler


class LMModule(L.LightningModule):
    network: torch.nn.Module

    def __init__(self, optimizer: dict | None = None, scheduler: dict | None = None):
        super().__init__()
        self.optimizer_cfg = dict(optimizer or {"name": "adamw", "lr": 1e-3})
        self.scheduler_cfg = dict(scheduler or {"name": "constant"})
        # The tokenizer as a `tokenizer.json` string: saved in every checkpoint so generation and
        # evaluation need nothing but the .ckpt file.
        self.tokenizer_json: str | None = None

    def configure_optimizers(self):
        optimizer = build_optimizer(self.network, **self.optimizer_cfg)
        scheduler = build_scheduler(optimizer, **self.scheduler_cfg)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def check_finite(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            raise TrainingDivergedError(
                f"train/loss is {loss.item()} at step {self.global_step}; lower optimizer.lr or set "
                f"trainer.gradient_clip_val, then resume from the last good checkpoint (ckpt_path=...)"
            )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tokenizer_json"] = self.tokenizer_json

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.tokenizer_json = checkpoint.get("tokenizer_json")
