"""METEOR (Lavie & Agarwal 2007) with exact and Porter-stem matching, no WordNet synonym stage.

The alignment, the parameters (alpha=0.9, beta=3, gamma=0.5) and the score follow
`nltk.translate.meteor_score` step for step, except its third stage: matching WordNet synonyms
needs the WordNet corpus, which is data nltk downloads at run time (not possible here, and no
dependency ships it). So the score is nltk's METEOR with an empty synonym list: it is never
higher than nltk's with WordNet, and equal when no leftover word pair is a synonym pair.
`tests/metrics` checks it equals nltk's `meteor_score(..., wordnet=<no synonyms>)`.

1. Lowercase and tokenize: runs of word characters, and each other non-space character alone
   (nltk's METEOR expects pre-tokenized text; this stands in for `word_tokenize`, which needs
   punkt data).
2. Exact stage: from the last hypothesis word backwards, each word takes the last still-unused
   reference position with the same word.
3. Stem stage: the same on the words left over, compared by their Porter stems (nltk's
   `PorterStemmer`, which needs no data).
4. P = matches / hypothesis length, R = matches / reference length,
   Fmean = P R / (alpha P + (1 - alpha) R); chunks = runs of matches adjacent in both texts;
   score = Fmean (1 - gamma (chunks / matches)^beta), 0 without matches.
5. Several references: the best score. The corpus value is the mean of sentence scores.
"""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from functools import lru_cache

import torch
from torchmetrics import Metric

from lmpretrain.metrics._inputs import as_reference_lists
from lmpretrain.metrics._optional import require

_TOKEN = re.compile(r"\w+|[^\w\s]")


def meteor_tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


@lru_cache(maxsize=1)
def _stemmer():
    return require("nltk.stem.porter", "nltk", "meteor").PorterStemmer()


@lru_cache(maxsize=65536)
def _stem(word: str) -> str:
    return _stemmer().stem(word)


def _match(hyp: list[tuple[int, str]], ref: list[tuple[int, str]]):
    """nltk's `_match_enums`: (matches as (hyp pos, ref pos), unmatched hyp, unmatched ref)."""
    positions = defaultdict(list)
    for j, (_, word) in enumerate(ref):
        positions[word].append(j)
    matches, used_h, used_r = [], set(), set()
    for i in reversed(range(len(hyp))):
        free = positions.get(hyp[i][1])
        if free:
            j = free.pop()
            used_h.add(i)
            used_r.add(j)
            matches.append((hyp[i][0], ref[j][0]))
    rest_h = [p for i, p in enumerate(hyp) if i not in used_h]
    rest_r = [p for j, p in enumerate(ref) if j not in used_r]
    return matches, rest_h, rest_r


def _chunks(matches: list[tuple[int, int]]) -> int:
    return 1 + sum(1 for (h, r), (h2, r2) in itertools.pairwise(matches) if not (h2 == h + 1 and r2 == r + 1))


def single_meteor(
    hypothesis: list[str], reference: list[str], alpha: float = 0.9, beta: float = 3.0, gamma: float = 0.5
) -> float:
    """METEOR of one tokenized hypothesis against one tokenized reference."""
    hyp, ref = list(enumerate(hypothesis)), list(enumerate(reference))
    exact, hyp, ref = _match(hyp, ref)
    stem, _, _ = _match([(i, _stem(w)) for i, w in hyp], [(j, _stem(w)) for j, w in ref])
    matches = sorted(exact + stem)
    if not matches:
        return 0.0
    precision, recall = len(matches) / len(hypothesis), len(matches) / len(reference)
    fmean = precision * recall / (alpha * precision + (1 - alpha) * recall)
    return (1 - gamma * (_chunks(matches) / len(matches)) ** beta) * fmean


def meteor_score(prediction: str, references: list[str]) -> float:
    """Best METEOR of `prediction` over `references` (plain strings)."""
    hyp = meteor_tokenize(prediction)
    return max(single_meteor(hyp, meteor_tokenize(r)) for r in references)


class Meteor(Metric):
    """Mean sentence METEOR; `update(predictions, references)`, one or several references each."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        _stemmer()  # a missing nltk fails here, when the metric is built
        self.add_state("score_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predictions: list[str], references: list[str] | list[list[str]]) -> None:
        refs = as_reference_lists(predictions, references)
        self.score_sum += sum(meteor_score(p, r) for p, r in zip(predictions, refs))
        self.count += len(predictions)

    def compute(self) -> torch.Tensor:
        return (self.score_sum / self.count.clamp(min=1)).float()
