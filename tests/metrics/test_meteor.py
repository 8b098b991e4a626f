import pytest
import torch
from nltk.translate.meteor_score import meteor_score as nltk_meteor_score

from lmpretrain.metrics import Meteor
from lmpretrain.metrics.meteor import meteor_score, meteor_tokenize, single_meteor


class NoSynonyms:
    """Stands in for nltk's WordNet reader: the synonym stage finds nothing (as in ours)."""

    @staticmethod
    def synsets(word):
        return []


HYPOTHESES = [
    "It is a guide to action which ensures that the military always obeys the commands of the party.",
    "The cats were sitting on the mats, running and jumping.",
    "the the the cat",
    "completely unrelated words here",
    "a b c d e f",
    "He is running quickly towards the houses",
]
REFERENCES = [
    [
        "It is a guide to action that ensures that the military will forever heed Party commands.",
        "It is the guiding principle which guarantees the military forces always being under the command of the Party.",
    ],
    ["A cat sat on the mat; it ran and jumped."],
    ["the cat sat on the mat"],
    ["this is a cat"],
    ["f e d c b a", "a b x d e f"],
    ["He runs quick toward the house."],
]


def nltk_reference(hypothesis: str, references: list[str]) -> float:
    return nltk_meteor_score(
        [meteor_tokenize(r) for r in references], meteor_tokenize(hypothesis), wordnet=NoSynonyms()
    )


@pytest.mark.parametrize("i", range(len(HYPOTHESES)))
def test_meteor_equals_nltk_without_synonyms(i):
    assert meteor_score(HYPOTHESES[i], REFERENCES[i]) == pytest.approx(
        nltk_reference(HYPOTHESES[i], REFERENCES[i])
    )


def test_meteor_hand_computed():
    # 4 hypothesis words, 6 reference words; "cats"~"cat" by stem, "sat" exact: 2 matches, 2 chunks
    # P = 2/4, R = 2/6, Fmean = PR / (0.9 P + 0.1 R) = (1/6) / (0.45 + 1/30) = 0.3448...
    # penalty = 0.5 (2/2)^3 = 0.5  ->  0.1724...
    hyp, ref = ["cats", "never", "sat", "down"], ["the", "cat", "always", "sat", "on", "mats"]
    fmean = (0.5 * (1 / 3)) / (0.9 * 0.5 + 0.1 * (1 / 3))
    assert single_meteor(hyp, ref) == pytest.approx(fmean * 0.5)
    # all 6 words in one chunk: penalty 0.5 (1/6)^3
    assert single_meteor(ref, ref) == pytest.approx(1 - 0.5 / 216)
    assert single_meteor([], ref) == 0.0
    assert meteor_tokenize("Don't stop, Sir!") == ["don", "'", "t", "stop", ",", "sir", "!"]


def test_meteor_metric_is_the_mean_of_sentence_scores():
    metric = Meteor()
    metric.update(HYPOTHESES[:2], REFERENCES[:2])
    metric.update(HYPOTHESES[2:], [r if len(r) > 1 else r[0] for r in REFERENCES[2:]])  # plain strings too
    expected = sum(nltk_reference(h, r) for h, r in zip(HYPOTHESES, REFERENCES)) / len(HYPOTHESES)
    torch.testing.assert_close(metric.compute(), torch.tensor(expected, dtype=torch.float32))
