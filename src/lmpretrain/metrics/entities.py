"""Entity-level precision / recall / F1 over BIO tag sequences, as conlleval and seqeval count them.

torchmetrics has token-level classification metrics but no span-level one; NER is judged by
exact entity spans (type, start, end): a half-found entity is a miss and a false alarm.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric


def bio_spans(tags: list[str]) -> set[tuple[str, int, int]]:
    """Entity spans (type, start, end exclusive) of one BIO sequence, conlleval's rules: an entity
    starts at B-X, or at I-X after O or after another type (a stray I- still opens a span)."""
    spans, kind, start = set(), None, 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, name = tag.partition("-")
        begins = prefix == "B" or (prefix == "I" and name != kind)
        if kind is not None and (prefix == "O" or begins):
            spans.add((kind, start, i))
            kind = None
        if begins:
            kind, start = name, i
    return spans


class EntityF1(Metric):
    """Micro-averaged over all entity types; `compute()` -> {"precision", "recall", "f1"}."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for name in ("tp", "fp", "fn"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predicted: list[list[str]], target: list[list[str]]) -> None:
        for p, t in zip(predicted, target, strict=True):
            ps, ts = bio_spans(p), bio_spans(t)
            self.tp += len(ps & ts)
            self.fp += len(ps - ts)
            self.fn += len(ts - ps)

    def compute(self) -> dict[str, torch.Tensor]:
        tp, fp, fn = self.tp.double(), self.fp.double(), self.fn.double()
        precision = tp / (tp + fp) if tp + fp > 0 else tp * 0
        recall = tp / (tp + fn) if tp + fn > 0 else tp * 0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else tp * 0
        return {"precision": precision.float(), "recall": recall.float(), "f1": f1.float()}
