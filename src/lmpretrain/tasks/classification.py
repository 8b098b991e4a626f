"""Sequence classification (topic, spam, sentiment, NLI-style pairs): one label per example."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from lmpretrain.models.pooling import pool
from lmpretrain.tasks.base import FinetuneModule


class SequenceClassificationModule(FinetuneModule):
    """Batches: input_ids, attention_mask (+ token_type_ids), labels (B,). Logs `val/loss`,
    `val/acc` (micro accuracy) and `val/f1` (macro F1: every class counts the same, so a model
    that ignores the rare classes cannot hide behind the frequent ones)."""

    prog_bar_metric = "acc"

    def __init__(self, model: dict, labels: list[str], pooling: str = "auto", classifier_dropout: float = 0.1,
                 optimizer: dict | None = None, scheduler: dict | None = None, adversarial: dict | None = None):
        self.labels = self.check_labels(labels)
        super().__init__(model, len(self.labels), pooling, classifier_dropout, optimizer, scheduler, adversarial)
        self.save_hyperparameters()
        n = len(self.labels)
        self.metrics = torch.nn.ModuleDict({
            split: torch.nn.ModuleDict({
                "loss": MeanMetric(),
                "acc": MulticlassAccuracy(n, average="micro"),
                "f1": MulticlassF1Score(n, average="macro"),
            })
            for split in ("val", "test")
        })

    def forward(self, batch: dict) -> torch.Tensor:
        """(B, num_labels) logits."""
        pooled = pool(self.features(batch), batch.get("attention_mask"), self.pooling)  # (B, C)
        return self.network.task_head(pooled)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.train_loss(batch, lambda: F.cross_entropy(self(batch), batch["labels"]))

    def _eval_step(self, split: str, batch: dict) -> None:
        logits = self(batch)
        m = self.metrics[split]
        m["loss"].update(F.cross_entropy(logits, batch["labels"]), weight=len(batch["labels"]))
        m["acc"].update(logits, batch["labels"])
        m["f1"].update(logits, batch["labels"])

    @torch.no_grad()
    def predict_labels(self, batch: dict) -> list[str]:
        return [self.labels[i] for i in self(batch).argmax(-1).tolist()]
