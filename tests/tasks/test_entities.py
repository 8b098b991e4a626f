"""Entity-level F1 counts exact spans by conlleval's rules."""

import pytest

from lmpretrain.metrics.entities import EntityF1, bio_spans


def test_bio_spans_follow_conlleval():
    tags = ["B-person", "I-person", "O", "B-geo-loc", "B-geo-loc", "I-geo-loc", "I-company", "O", "I-product"]
    assert bio_spans(tags) == {("person", 0, 2), ("geo-loc", 3, 4), ("geo-loc", 4, 6), ("company", 6, 7),
                               ("product", 8, 9)}
    assert bio_spans(["O", "O"]) == set() and bio_spans([]) == set()
    assert bio_spans(["B-x", "I-x", "I-x"]) == {("x", 0, 3)}  # runs to the end of the sentence


def test_entity_f1_counts_partial_matches_as_miss_and_false_alarm():
    metric = EntityF1()
    gold = [["B-person", "I-person", "O", "B-company"], ["O", "B-movie", "I-movie"]]
    pred = [["B-person", "O", "O", "B-company"], ["O", "B-movie", "I-movie"]]
    metric.update(pred, gold)
    # gold spans 3; predicted 3; exact matches 2 (company, movie); person cut short: 1 fp + 1 fn
    out = metric.compute()
    assert float(out["precision"]) == pytest.approx(2 / 3)
    assert float(out["recall"]) == pytest.approx(2 / 3)
    assert float(out["f1"]) == pytest.approx(2 / 3)
    metric.update([["O"]], [["B-x"]])  # one more miss: recall 2/4
    out = metric.compute()
    assert float(out["recall"]) == pytest.approx(0.5) and float(out["precision"]) == pytest.approx(2 / 3)
    assert float(out["f1"]) == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))


def test_entity_f1_is_zero_not_nan_without_entities():
    metric = EntityF1()
    metric.update([["O", "O"]], [["O", "O"]])
    assert {k: float(v) for k, v in metric.compute().items()} == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
