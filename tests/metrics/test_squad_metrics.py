import re
import string
from collections import Counter

import pytest
import torch

from lmpretrain.metrics import SquadMetrics
from lmpretrain.metrics.squad import normalize_answer


# The official SQuAD v1.1 evaluation script's scoring functions, as published.
def official_normalize_answer(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def official_f1_score(prediction, ground_truth):
    prediction_tokens = official_normalize_answer(prediction).split()
    ground_truth_tokens = official_normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def official_exact_match_score(prediction, ground_truth):
    return official_normalize_answer(prediction) == official_normalize_answer(ground_truth)


def official_metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
    return max(metric_fn(prediction, gt) for gt in ground_truths)


PREDICTIONS = [
    "The Eiffel Tower",
    "in 1889",
    "Gustave Eiffel's company",
    "an apple a day",
    "",
    "the",
    "Denver Broncos",
    "  Paris,   France!! ",
]
REFERENCES = [
    ["Eiffel Tower", "the tower"],
    ["1889"],
    ["Gustave Eiffel", "the company of Gustave Eiffel"],
    ["apple"],
    ["something"],
    ["a"],
    ["Carolina Panthers", "Panthers"],
    ["Paris France"],
]


def test_normalize_answer_matches_the_official_script():
    for s in ["The  Cat's hat!", "an A-team", "  theatre of the absurd. ", "Ångström, (a) THE"]:
        assert normalize_answer(s) == official_normalize_answer(s)
    assert normalize_answer("The Cat's   hat, an apple!") == "cats hat apple"


def test_squad_metrics_match_the_official_script():
    metric = SquadMetrics()
    metric.update(PREDICTIONS[:3], REFERENCES[:3])  # two updates: the means pool all examples
    metric.update(PREDICTIONS[3:], REFERENCES[3:])
    out = metric.compute()
    em = [
        official_metric_max_over_ground_truths(official_exact_match_score, p, g)
        for p, g in zip(PREDICTIONS, REFERENCES)
    ]
    f1 = [
        official_metric_max_over_ground_truths(official_f1_score, p, g)
        for p, g in zip(PREDICTIONS, REFERENCES)
    ]
    torch.testing.assert_close(out["exact_match"], torch.tensor(sum(em) / len(em)))
    torch.testing.assert_close(out["f1"], torch.tensor(sum(f1) / len(f1)))


def test_squad_hand_computed():
    metric = SquadMetrics()
    # EM 1, F1 1 | EM 0, F1 2*(1/2*1)/(1/2+1) = 2/3 | best of two golds: EM 0, F1 max(0, 0.5*0.5*2/1) = 0.5
    metric.update(
        ["the Eiffel Tower!", "in 1889", "Paris Texas"],
        ["Eiffel tower", "1889", ["Berlin", "Paris France"]],
    )
    out = metric.compute()
    assert out["exact_match"].item() == pytest.approx(1 / 3)
    assert out["f1"].item() == pytest.approx((1 + 2 / 3 + 0.5) / 3)
    # v1.1: an answer that normalises to nothing shares no token, so F1 0 (but exact match 1)
    metric.reset()
    metric.update(["the"], ["a"])
    assert metric.compute() == {"exact_match": torch.tensor(1.0), "f1": torch.tensor(0.0)}


def test_squad_rejects_mismatched_inputs():
    with pytest.raises(ValueError):
        SquadMetrics().update(["a", "b"], ["a"])
    with pytest.raises(TypeError):
        SquadMetrics().update("a", "a")
