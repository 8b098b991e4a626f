"""Measure near-duplicate detection on a corpus with injected near-duplicates.

Used by tests/cleaning/test_dedup.py and bench/dedup.py. Copies of real paragraphs get a few words
substituted, deleted or inserted, are appended to the corpus, and dedup must remove them (recall)
without removing documents that are not near-duplicates (precision). A removed original counts as
correct when its exact shingle Jaccard with some document of its cluster reaches the threshold:
real corpora contain natural near-duplicates (Debian's `foo` / `foo-common` descriptions), and
removing them is right.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from lmpretrain.cleaning.dedup import DedupConfig, MinHasher, exact_duplicates, exact_hash, near_duplicates


@dataclass
class DedupQuality:
    recall: float  # injected copies removed / injected copies
    precision: float  # correct removals / removals
    removed: int
    injected: int


def perturb(text: str, n_edits: int, vocab: list[str], rng: random.Random) -> str:
    """`n_edits` random word edits: substitute with a vocabulary word, delete, or insert one."""
    words = text.split()
    for _ in range(n_edits):
        i = rng.randrange(len(words))
        op = rng.choice(("substitute", "delete", "insert"))
        if op == "substitute":
            words[i] = rng.choice(vocab)
        elif op == "delete" and len(words) > 1:
            del words[i]
        else:
            words.insert(i, rng.choice(vocab))
    return " ".join(words)


def inject_near_duplicates(
    texts: list[str], n_copies: int, edit_fraction: float = 0.03, seed: int = 0
) -> tuple[list[str], np.ndarray]:
    """`texts` + `n_copies` perturbed copies of random texts; returns (corpus, source index of
    each copy). A copy of a text of W words gets max(1, round(edit_fraction * W)) edits."""
    rng = random.Random(seed)
    vocab = [w for t in rng.sample(texts, min(200, len(texts))) for w in t.split()]
    originals = np.array(rng.sample(range(len(texts)), n_copies))
    copies = [perturb(texts[i], max(1, round(edit_fraction * len(texts[i].split()))), vocab, rng) for i in originals]
    return texts + copies, originals


def shingle_jaccard(a: str, b: str, hasher: MinHasher) -> float:
    sa, sb = set(hasher.shingles(a).tolist()), set(hasher.shingles(b).tolist())
    return len(sa & sb) / max(len(sa | sb), 1)


def dedup_remove_mask(texts: list[str], cfg: DedupConfig) -> tuple[np.ndarray, MinHasher]:
    """dup_of per document (-1 = kept) after exact then near dedup, as prepare runs them."""
    dup_of = exact_duplicates(np.array([exact_hash(t) for t in texts], dtype=np.uint64))
    hasher = MinHasher(cfg.num_perm, cfg.ngram, cfg.seed)
    unique = np.flatnonzero(dup_of < 0)
    near = near_duplicates(hasher.signatures([texts[i] for i in unique]), cfg)
    dup_of[unique[near >= 0]] = unique[near[near >= 0]]
    return dup_of, hasher


def _has_similar_in_cluster(i: int, dup_of: np.ndarray, corpus: list[str], hasher: MinHasher, cfg: DedupConfig) -> bool:
    root = int(dup_of[i])
    cluster = [root, *(int(j) for j in np.flatnonzero(dup_of == root)[:50] if j != i)]
    return max(shingle_jaccard(corpus[i], corpus[j], hasher) for j in cluster) >= cfg.threshold


def measure_dedup_quality(base: list[str], n_copies: int, cfg: DedupConfig, seed: int = 0) -> DedupQuality:
    corpus, _ = inject_near_duplicates(base, n_copies, seed=seed)
    dup_of, hasher = dedup_remove_mask(corpus, cfg)
    removed = np.flatnonzero(dup_of >= 0)
    is_copy = removed >= len(base)
    correct = is_copy | np.array([_has_similar_in_cluster(i, dup_of, corpus, hasher, cfg) for i in removed])
    return DedupQuality(
        recall=float(is_copy.sum()) / n_copies,
        precision=float(correct.mean()) if len(removed) else 1.0,
        removed=len(removed),
        injected=n_copies,
    )
