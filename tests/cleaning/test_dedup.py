"""Dedup on real paragraphs from the shared data with injected near-duplicates."""

import gzip
import json

import numpy as np
import pytest

from lmpretrain.cleaning.dedup import (
    DedupConfig,
    MinHasher,
    exact_duplicates,
    exact_hash,
    near_duplicates,
    optimal_bands,
)
from lmpretrain.cleaning.dedup_eval import measure_dedup_quality, shingle_jaccard
from lmpretrain.paths import data_root


def shared_paragraphs(n_each: int) -> list[str]:
    """Bible passages (4 verses), Shakespeare windows (80 words), Debian descriptions (40+ words)."""
    root = data_root()
    with gzip.open(root / "translation_en_es.train.jsonl.gz", "rt", encoding="utf-8") as f:
        verses = [json.loads(line)["en"] for line in f]
    bible = [" ".join(verses[i : i + 4]) for i in range(0, 4 * n_each, 4)]
    words = (root / "tinyshakespeare.txt").read_text(encoding="utf-8").split()
    shakespeare = [" ".join(words[i : i + 80]) for i in range(0, 80 * n_each, 80)]
    debian = []
    with gzip.open(root / "debian_packages.train.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            text = json.loads(line)["description"]
            if len(text.split()) >= 40:
                debian.append(text)
            if len(debian) == n_each:
                break
    return bible + shakespeare + debian


def test_exact_hash_ignores_case_and_whitespace_only():
    assert exact_hash("Hello   World\n") == exact_hash("hello world")
    assert exact_hash("hello world") != exact_hash("hello world!")
    assert exact_duplicates(np.array([5, 7, 5, 7, 9], dtype=np.uint64)).tolist() == [-1, -1, 0, 1, -1]


def test_signature_agreement_estimates_jaccard():
    hasher = MinHasher(num_perm=256, ngram=1, seed=3)
    a = " ".join(f"w{i}" for i in range(100))
    b = " ".join(f"w{i}" for i in range(50, 150))  # Jaccard = 50 / 150
    sigs = hasher.signatures([a, b])
    assert shingle_jaccard(a, b, hasher) == pytest.approx(1 / 3)
    assert (sigs[0] == sigs[1]).mean() == pytest.approx(1 / 3, abs=0.08)


def test_signatures_do_not_depend_on_batching():
    texts = [f"doc {i} " + "some shared words here " * (i % 5 + 1) for i in range(50)]
    hasher = MinHasher(max_block=7)
    assert np.array_equal(hasher.signatures(texts), np.concatenate([hasher.signatures([t]) for t in texts]))


def test_optimal_bands_puts_the_s_curve_threshold_near_the_target():
    bands, rows = optimal_bands(0.7, 128)
    assert bands * rows <= 128
    assert abs((1 / bands) ** (1 / rows) - 0.7) < 0.1  # the S-curve's inflection ~ (1/b)^(1/r)


def test_near_duplicates_keep_the_earliest_of_a_cluster():
    base = "the quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat " * 3
    texts = [base, "completely unrelated words about compilers and linkers " * 4, base.replace("cat", "bird", 1)]
    dup_of = near_duplicates(MinHasher().signatures(texts), DedupConfig(threshold=0.7))
    assert dup_of.tolist() == [-1, -1, 0]


def test_recall_and_precision_on_injected_near_duplicates():
    quality = measure_dedup_quality(shared_paragraphs(600), n_copies=300, cfg=DedupConfig(), seed=0)
    assert quality.recall >= 0.9, quality
    assert quality.precision >= 0.95, quality
