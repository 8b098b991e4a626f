"""ROUGE-Lsum (summary-level LCS), the one ROUGE variant torchmetrics cannot compute offline.

torchmetrics' `ROUGEScore` computes ROUGE-1/2/L; for Lsum it splits sentences with nltk's punkt
model, data that is downloaded at run time. This module follows Google's `rouge-score` package
instead, which splits on newlines: **put each sentence of a summary on its own line** (a text
without newlines is one sentence, and then rougeLsum == rougeL). Tokens as in `rouge-score` and
torchmetrics: lowercase, every run of characters other than [a-z0-9] is a separator; with
`stemmer=True` words longer than 3 characters are Porter-stemmed (nltk, no data needed).
Several references: the best F-measure. `tests/metrics` checks the values against `rouge-score`.
"""

from __future__ import annotations

import re
from collections import Counter

import torch
from torchmetrics import Metric

from lmpretrain.metrics._inputs import as_reference_lists
from lmpretrain.metrics._optional import require

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def porter_stemmer(metric: str):
    return require("nltk.stem.porter", "nltk", metric).PorterStemmer()


def rouge_tokenize(text: str, stemmer=None) -> list[str]:
    tokens = _NON_ALNUM.sub(" ", text.lower()).split()
    if stemmer is not None:
        tokens = [stemmer.stem(t) if len(t) > 3 else t for t in tokens]
    return [t for t in tokens if t]


def _lcs_positions(ref: list[str], cand: list[str]) -> list[int]:
    """Positions in `ref` of one longest common subsequence (rouge-score's table and backtrack)."""
    table = [[0] * (len(cand) + 1) for _ in range(len(ref) + 1)]
    for i in range(1, len(ref) + 1):
        for j in range(1, len(cand) + 1):
            if ref[i - 1] == cand[j - 1]:
                table[i][j] = table[i - 1][j - 1] + 1
            else:
                table[i][j] = max(table[i - 1][j], table[i][j - 1])
    i, j, positions = len(ref), len(cand), []
    while i > 0 and j > 0:
        if ref[i - 1] == cand[j - 1]:
            positions.append(i - 1)
            i, j = i - 1, j - 1
        elif table[i][j - 1] > table[i - 1][j]:
            j -= 1
        else:
            i -= 1
    return positions


def rouge_lsum(prediction: str, reference: str, stemmer=None) -> float:
    """Summary-level LCS F-measure; sentences are the non-empty lines of each text."""
    pred = [rouge_tokenize(s, stemmer) for s in prediction.split("\n") if s]
    ref = [rouge_tokenize(s, stemmer) for s in reference.split("\n") if s]
    n, m = sum(map(len, pred)), sum(map(len, ref))
    if n == 0 or m == 0:
        return 0.0
    pred_counts, ref_counts = Counter(t for s in pred for t in s), Counter(t for s in ref for t in s)
    hits = 0
    for r in ref:
        union = sorted(set().union(*(_lcs_positions(r, c) for c in pred)))
        for token in (r[i] for i in union):
            if pred_counts[token] > 0 and ref_counts[token] > 0:  # each token counts once
                hits += 1
                pred_counts[token] -= 1
                ref_counts[token] -= 1
    precision, recall = hits / n, hits / m
    return 2 * precision * recall / (precision + recall) if hits else 0.0


class RougeLsum(Metric):
    """Mean over examples of the best rougeLsum F-measure over the references."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, stemmer: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.stemmer = porter_stemmer("rouge") if stemmer else None
        self.add_state("score_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predictions: list[str], references: list[str] | list[list[str]]) -> None:
        refs = as_reference_lists(predictions, references)
        self.score_sum += sum(
            max(rouge_lsum(p, r, self.stemmer) for r in rs) for p, rs in zip(predictions, refs)
        )
        self.count += len(predictions)

    def compute(self) -> torch.Tensor:
        return (self.score_sum / self.count.clamp(min=1)).float()
