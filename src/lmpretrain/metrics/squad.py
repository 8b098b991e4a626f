"""SQuAD exact match and token F1, exactly as the official SQuAD v1.1 evaluation script scores them.

Answers are normalised (lowercase, punctuation removed, the articles a/an/the removed, whitespace
collapsed); exact match compares the normalised strings, F1 compares their bags of tokens. A
prediction is scored against every gold answer and keeps the best. Values are fractions in [0, 1]
(the official script prints them x100).

torchmetrics has `torchmetrics.text.SQuAD` with the same normalisation, but it scores an empty
answer against an empty gold answer as F1 = 1 (SQuAD 2.0's no-answer rule) and takes SQuAD's
nested-dict format; v1.1 gives F1 = 0 whenever no token is shared, which is what this follows.
"""

from __future__ import annotations

import re
import string
from collections import Counter

import torch
from torchmetrics import Metric

from lmpretrain.metrics._inputs import as_reference_lists

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace (SQuAD v1.1)."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(prediction: str, ground_truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def token_f1(prediction: str, ground_truth: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(ground_truth).split()
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


class SquadMetrics(Metric):
    """`update(predictions, references)`, one gold answer or a list of them per prediction;
    `compute()` -> {"exact_match", "f1"}: means over examples of the best score over gold answers."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("em_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("f1_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predictions: list[str], references: list[str] | list[list[str]]) -> None:
        for pred, golds in zip(predictions, as_reference_lists(predictions, references)):
            self.em_sum += max(exact_match(pred, g) for g in golds)
            self.f1_sum += max(token_f1(pred, g) for g in golds)
        self.count += len(predictions)

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.count.clamp(min=1).double()
        return {"exact_match": (self.em_sum / n).float(), "f1": (self.f1_sum / n).float()}
