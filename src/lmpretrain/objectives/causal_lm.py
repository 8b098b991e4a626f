"""Causal language modelling: predict token t+1 from tokens <= t."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmpretrain.metrics import TokenNLL
from lmpretrain.models import build_network
from lmpretrain.module import LMModule, linear_cross_entropy


class CausalLMModule(LMModule):
    """Batches are `{"input_ids": (B, T), "labels": (B, T)}`; label -100 is ignored."""

    def __init__(self, model: dict, optimizer: dict | None = None, scheduler: dict | None = None):
        super().__init__(optimizer, scheduler)
        self.save_hyperparameters()
        self.network = build_network(model)
        self.val_nll = TokenNLL()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.network(input_ids)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.runtime.fused_loss:
            hidden = self.network.features(batch["input_ids"])  # (B, T, C)
            return linear_cross_entropy(hidden.flatten(0, 1), self.network.lm_head.weight,
                                        batch["labels"].flatten(), self.runtime.loss_chunk_tokens)
        logits = self.network(batch["input_ids"])  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.check_finite(loss)
        # sync_dist: the mean over all ranks, i.e. the loss of the global batch (a no-op on one process).
        self.log("train/loss", loss, prog_bar=True, sync_dist=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss = self.loss(batch)
        self.val_nll.update(loss, int((batch["labels"] != -100).sum()))

    def on_validation_epoch_end(self) -> None:
        # compute() syncs the sums across ranks, so every rank logs the global value.
        self.log("val/loss", self.val_nll.compute(), prog_bar=True)
        self.log("val/ppl", self.val_nll.perplexity())
        self.val_nll.reset()

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        was_training = self.network.training
        self.network.eval()
        out = self.network.generate(input_ids, max_new_tokens, temperature, top_k, generator)
        self.network.train(was_training)
        return out
