"""Exact and near-duplicate detection across all sources.

Exact: a 64-bit hash of the case-folded, whitespace-collapsed text.

Near: MinHash over word n-gram shingles, then LSH banding (Broder 1997; Leskovec et al., *Mining of
Massive Datasets*, ch. 3). A signature keeps, for each of `num_perm` hash functions, the smallest
hash over a document's shingles; two signatures agree in one position with probability equal to
the Jaccard similarity of the shingle sets. Banding splits a signature into `bands` groups of
`rows`; documents that agree on a whole band land in the same bucket and become candidates. Each
bucket links its members to its first document, so the work is O(n log n) per band, never
O(n^2) over pairs. Candidates are then checked against the signature's Jaccard estimate, and
linked documents form clusters (union-find) in which the earliest document is kept.

Everything here is plain numpy on uint64 with wrap-around arithmetic; hashes are seeded and
independent of PYTHONHASHSEED, so worker processes agree with each other and across runs.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from dataclasses import dataclass

import numpy as np

from lmpretrain.errors import ConfigError

_WORD = re.compile(r"\w+")
_SPACES = re.compile(r"\s+")


@dataclass
class DedupConfig:
    exact: bool = True
    near: bool = True
    threshold: float = 0.7  # Jaccard similarity of shingle sets above which documents are near-duplicates
    ngram: int = 3  # words per shingle: 3 keeps a paragraph with ~3% of its words changed above 0.8
    num_perm: int = 128
    bands: int | None = None  # None: chosen to balance false positives and negatives at `threshold`
    seed: int = 1

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"dedup.threshold={self.threshold} must lie in (0, 1)")
        if self.bands is not None and not 1 <= self.bands <= self.num_perm:
            raise ConfigError(f"dedup.bands={self.bands} must lie in [1, num_perm={self.num_perm}]")


def exact_hash(text: str) -> int:
    """64-bit hash of the text with case and whitespace differences removed."""
    canonical = _SPACES.sub(" ", text.casefold()).strip()
    return int.from_bytes(hashlib.blake2b(canonical.encode(), digest_size=8).digest(), "little")


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer: spreads similar inputs over all 64 bits."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class MinHasher:
    """Signatures of shape (n_docs, num_perm), uint32, via multiply-shift hashes h(x) = (a*x + b) >> 32."""

    def __init__(self, num_perm: int = 128, ngram: int = 3, seed: int = 1, max_block: int = 1 << 15):
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # odd
        self.b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
        self.ngram = ngram
        self.max_block = max_block  # shingles per (S, num_perm) block, bounds memory to ~32 MB

    def shingles(self, text: str) -> np.ndarray:
        """Hashes of the lower-cased word n-grams; a text shorter than n is one shingle."""
        words = _WORD.findall(text.lower()) or [""]
        ids = np.fromiter((zlib.crc32(w.encode()) for w in words), dtype=np.uint64, count=len(words))
        n = min(self.ngram, len(ids))
        keys = np.zeros(len(ids) - n + 1, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for k in range(n):
                keys = keys * np.uint64(0x100000001B3) + ids[k : len(ids) - n + 1 + k]
            return _mix64(keys)

    def signatures(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), len(self.a)), dtype=np.uint32)
        start = 0
        while start < len(texts):
            shingles, stop, total = [], start, 0
            while stop < len(texts) and (total < self.max_block or stop == start):
                shingles.append(self.shingles(texts[stop]))
                total, stop = total + len(shingles[-1]), stop + 1
            out[start:stop] = self._block(shingles)
            start = stop
        return out

    def _block(self, shingles: list[np.ndarray]) -> np.ndarray:
        flat = np.concatenate(shingles)  # (S,)
        offsets = np.cumsum([0] + [len(s) for s in shingles[:-1]])
        with np.errstate(over="ignore"):
            hashed = (flat[:, None] * self.a[None, :] + self.b[None, :]) >> np.uint64(32)  # (S, P)
        return np.minimum.reduceat(hashed, offsets, axis=0).astype(np.uint32)  # (n_docs, P)


def optimal_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) minimizing the area of false positives below and false negatives above
    `threshold` under the S-curve P(candidate | J=s) = 1 - (1 - s^rows)^bands."""
    best, best_err = (1, num_perm), float("inf")
    below, above = np.linspace(0, threshold, 201), np.linspace(threshold, 1, 201)
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            fp = np.trapezoid(1 - (1 - below**rows) ** bands, below)
            fn = np.trapezoid((1 - above**rows) ** bands, above)
            if fp + fn < best_err:
                best, best_err = (bands, rows), fp + fn
    return best


def lsh_candidates(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(k, 2) pairs (first document of a bucket, another member), over all bands, deduplicated."""
    pairs = []
    for band in range(bands):
        block = sigs[:, band * rows : (band + 1) * rows].astype(np.uint64)
        keys = np.zeros(len(sigs), dtype=np.uint64)
        with np.errstate(over="ignore"):
            for col in block.T:
                keys = keys * np.uint64(0x100000001B3) + col
        order = np.argsort(keys, kind="stable")  # stable: the bucket's first entry is its lowest index
        sorted_keys = keys[order]
        is_first = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]
        head = order[is_first][np.cumsum(is_first) - 1]
        member = head != order
        pairs.append(np.stack([head[member], order[member]], axis=1))
    if not pairs:
        return np.zeros((0, 2), dtype=np.int64)
    return np.unique(np.concatenate(pairs), axis=0)


def estimated_jaccard(sigs: np.ndarray, pairs: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    out = np.empty(len(pairs), dtype=np.float64)
    for i in range(0, len(pairs), chunk):
        a, b = pairs[i : i + chunk, 0], pairs[i : i + chunk, 1]
        out[i : i + chunk] = (sigs[a] == sigs[b]).mean(axis=1)
    return out


def _clusters_to_dup_of(n: int, pairs: np.ndarray) -> np.ndarray:
    """Union-find over `pairs`; each document maps to its cluster's lowest index, or -1 if it is that.
    Only documents that appear in a pair are visited, so unique documents cost nothing."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]  # path halving
            x = parent[x]
        return x

    for a, b in pairs.tolist():
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)  # the root is always the lowest index
    dup_of = np.full(n, -1, dtype=np.int64)
    for x in list(parent):
        root = find(x)
        if root != x:
            dup_of[x] = root
    return dup_of


def exact_duplicates(hashes: np.ndarray) -> np.ndarray:
    """For each document, the index of the first document with the same hash, or -1."""
    _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    dup_of = first[inverse]
    return np.where(dup_of == np.arange(len(hashes)), -1, dup_of).astype(np.int64)


def near_duplicates(sigs: np.ndarray, cfg: DedupConfig) -> np.ndarray:
    """For each signature row, the index of the earliest near-duplicate it clusters with, or -1."""
    bands, rows = (cfg.bands, cfg.num_perm // cfg.bands) if cfg.bands else optimal_bands(cfg.threshold, cfg.num_perm)
    pairs = lsh_candidates(sigs, bands, rows)
    pairs = pairs[estimated_jaccard(sigs, pairs) >= cfg.threshold]
    return _clusters_to_dup_of(len(sigs), pairs)
