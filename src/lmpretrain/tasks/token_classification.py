"""Token classification (NER, chunking, POS): one BIO tag per word, predicted on its first sub-word."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric

from lmpretrain.metrics.entities import EntityF1
from lmpretrain.tasks.base import FinetuneModule


class TokenClassificationModule(FinetuneModule):
    """Batches: input_ids, attention_mask, labels (B, T) with -100 on special tokens and on every
    sub-word but a word's first. Logs `val/loss`, `val/token_acc` (over words) and entity-level
    `val/precision`, `val/recall`, `val/f1` (exact spans, conlleval rules)."""

    prog_bar_metric = "f1"

    def __init__(self, model: dict, labels: list[str], pooling: str = "auto", classifier_dropout: float = 0.1,
                 optimizer: dict | None = None, scheduler: dict | None = None):
        self.labels = self.check_labels(labels)
        super().__init__(model, len(self.labels), pooling, classifier_dropout, optimizer, scheduler)
        self.save_hyperparameters()
        self.metrics = torch.nn.ModuleDict({
            split: torch.nn.ModuleDict({"loss": MeanMetric(), "token_acc": MeanMetric(), "entities": EntityF1()})
            for split in ("val", "test")
        })

    def forward(self, batch: dict) -> torch.Tensor:
        """(B, T, num_labels) logits."""
        return self.network.task_head(self.features(batch))

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.log_train_loss(self._loss(self(batch), batch["labels"]))

    def word_tags(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[list[list[str]], list[list[str]]]:
        """Predicted and gold tag sequences, one tag per word (positions whose label is not -100)."""
        pred, gold = [], []
        for row_logits, row_labels in zip(logits.argmax(-1).tolist(), labels.tolist()):
            keep = [i for i, y in enumerate(row_labels) if y != -100]
            pred.append([self.labels[row_logits[i]] for i in keep])
            gold.append([self.labels[row_labels[i]] for i in keep])
        return pred, gold

    def _eval_step(self, split: str, batch: dict) -> None:
        logits, labels = self(batch), batch["labels"]
        m, words = self.metrics[split], int((labels != -100).sum())
        m["loss"].update(self._loss(logits, labels), weight=words)
        correct = (logits.argmax(-1) == labels) & (labels != -100)
        m["token_acc"].update(correct.sum() / max(words, 1), weight=words)
        m["entities"].update(*self.word_tags(logits, labels))

