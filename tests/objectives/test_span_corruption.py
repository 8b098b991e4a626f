"""T5 span corruption: noise density and span length, and exact reconstruction from the targets."""

import numpy as np
import pytest
import torch

from lmpretrain.objectives.span_corruption import (
    SpanConfig,
    SpanCorruptionLoss,
    corrupt_spans,
    fill_spans,
    span_noise_mask,
)

SENTINEL0, EOS = 1000, 3


def runs(mask: np.ndarray) -> list[int]:
    """Lengths of the runs of True."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1))


@pytest.mark.parametrize("length", [128, 512])
def test_noise_density_and_mean_span_length(length):
    cfg, rng = SpanConfig(), np.random.default_rng(0)
    masks = np.stack([span_noise_mask(length, cfg, rng) for _ in range(500)])
    assert abs(masks.mean() - 0.15) < 0.005, masks.mean()
    spans = [n for m in masks for n in runs(m)]
    assert abs(np.mean(spans) - 3.0) < 0.2, np.mean(spans)
    assert not masks[:, 0].any()  # like T5, a row starts with a kept span
    # away from the row's ends (T5 opens with a kept span and closes with a noise span) the noise
    # rate is flat: spans are placed uniformly
    middle = masks[:, length // 4 : 3 * length // 4]
    assert abs(middle.mean() - 0.15) < 0.02, middle.mean()


def test_targets_reconstruct_the_input_exactly():
    cfg, rng = SpanConfig(), np.random.default_rng(1)
    for length in (16, 64, 128, 300):
        n_noise, n_spans = cfg.counts(length)
        for _ in range(200):
            tokens = rng.integers(0, SENTINEL0, length)
            tokens[rng.integers(0, length, 3)] = EOS  # packed rows hold document separators too
            inputs, targets = corrupt_spans(tokens, span_noise_mask(length, cfg, rng), SENTINEL0, EOS)
            assert len(inputs) == length - n_noise + n_spans + 1 and len(targets) == n_noise + n_spans + 1
            assert inputs[-1] == EOS and targets[-1] == EOS
            assert list(targets[targets >= SENTINEL0]) == list(range(SENTINEL0, SENTINEL0 + n_spans))
            np.testing.assert_array_equal(fill_spans(inputs, targets, SENTINEL0), tokens)


def test_worked_example():
    tokens = np.array([10, 11, 12, 13, 14, 15, 16, 17])  # a b c d e f g h
    noise = np.array([0, 1, 1, 0, 0, 1, 1, 0], dtype=bool)
    inputs, targets = corrupt_spans(tokens, noise, SENTINEL0, EOS)
    assert inputs.tolist() == [10, 1000, 13, 14, 1001, 17, EOS]
    assert targets.tolist() == [1000, 11, 12, 1001, 15, 16, EOS]


def test_task_batches_are_teacher_forced_and_fixed_length():
    task = SpanCorruptionLoss(SENTINEL0, SpanConfig())
    task.eos_id, task.start_id = EOS, 0
    ids = torch.randint(5, SENTINEL0, (4, 128))
    out = task.corrupt(ids, seed=0)
    assert out["input_ids"].shape == (4, 116) and out["labels"].shape == (4, 26)
    assert (out["decoder_input_ids"][:, 0] == 0).all()
    assert torch.equal(out["decoder_input_ids"][:, 1:], out["labels"][:, :-1])
    assert torch.equal(task.corrupt(ids, seed=0)["input_ids"], out["input_ids"])  # a function of the seed
