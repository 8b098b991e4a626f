import numpy as np
import pytest
import torch
from rouge_score import rouge_scorer

from lmpretrain.metrics import RougeLsum
from lmpretrain.metrics.rouge import rouge_lsum

PREDICTIONS = [
    "The cat sat on the mat.\nIt was happy there.",
    "police killed the gunman\nthe gunman was armed",
    "Running dogs chase cats.\n\nCats run up trees quickly.",
    "one line only, no newline at all",
    "",
]
REFERENCES = [
    ["A cat was sitting on the mat.\nThe cat looked happy.", "the mat held a cat"],
    ["the gunman was shot dead by police\npolice said he was armed"],
    ["The dogs ran after the cat.\nThe cat ran up a tree."],
    ["only one line, with no newline"],
    ["nothing predicted"],
]


@pytest.mark.parametrize("stemmer", [False, True])
def test_rouge_lsum_equals_rouge_score(stemmer):
    scorer = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=stemmer)
    metric = RougeLsum(stemmer=stemmer)
    metric.update(PREDICTIONS, REFERENCES)
    expected = [
        scorer.score_multi(refs, pred)["rougeLsum"].fmeasure for pred, refs in zip(PREDICTIONS, REFERENCES)
    ]
    for pred, refs, value in zip(PREDICTIONS, REFERENCES, expected):
        stem = metric.stemmer
        assert max(rouge_lsum(pred, r, stem) for r in refs) == pytest.approx(value)
    torch.testing.assert_close(metric.compute(), torch.tensor(np.mean(expected), dtype=torch.float32))


def test_rouge_lsum_hand_computed():
    # one sentence each: LCS("a b c d", "a c d e") = 3 -> P = R = 3/4
    assert rouge_lsum("a b c d", "a c d e") == pytest.approx(0.75)
    # reference sentence "a b c" against candidate sentences "a x", "b c": union LCS = {a, b, c}
    # hits 3, P = 3/4, R = 3/3 -> F = 6/7; as one line the LCS is also 3 ("a b c" in "a x b c")
    assert rouge_lsum("a x\nb c", "a b c") == pytest.approx(6 / 7)
    # sentence order matters only within sentences: swapped sentences still score 1
    assert rouge_lsum("c d\na b", "a b\nc d") == pytest.approx(1.0)
    assert rouge_lsum("", "a b") == 0.0
