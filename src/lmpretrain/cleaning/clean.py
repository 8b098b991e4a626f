"""The per-document cleaning chain, run on batches (in worker processes when workers > 1):
normalize -> language id -> quality checks -> exact hash + MinHash signature of the survivors.

Deduplication itself needs every document's hash, so it runs afterwards over all sources
(`lmpretrain.cleaning.dedup`); here each survivor only gets what dedup needs.
"""

from __future__ import annotations

import multiprocessing as mp
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from lmpretrain.cleaning.dedup import DedupConfig, MinHasher, exact_hash
from lmpretrain.cleaning.filters import QualityConfig, build_checks, quality_verdict
from lmpretrain.cleaning.langid import LangIdConfig, detect_language, keep_language
from lmpretrain.cleaning.normalize import NormalizeConfig, normalize_text

# Which pipeline stage dropped a document, from its reason's prefix (see Cleaner.__call__).
STAGE_OF_REASON = {"empty": "normalize", "lang": "langid", "quality": "quality"}


def stage_of(reason: str) -> str:
    return STAGE_OF_REASON[reason.split(":", 1)[0]]


@dataclass
class CleaningConfig:
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    langid: LangIdConfig = field(default_factory=LangIdConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)


@dataclass
class CleanedBatch:
    reasons: list[str | None]  # per input document: None = kept, else "empty" | "lang:xx" | "quality:<check>"
    languages: list[str]  # per input document, "" when not identified
    words: np.ndarray  # (n_in,) int64, whitespace words after normalization
    chars: np.ndarray  # (n_in,) int64
    texts: list[str]  # the kept documents, normalized
    hashes: np.ndarray  # (n_kept,) uint64 exact_hash
    signatures: np.ndarray | None  # (n_kept, num_perm) uint32, None when near dedup is off


class Cleaner:
    def __init__(self, cfg: CleaningConfig):
        self.cfg = cfg
        self.checks = build_checks(cfg.quality)
        d = cfg.dedup
        self.hasher = MinHasher(d.num_perm, d.ngram, d.seed) if d.near else None

    def verdict(self, text: str) -> tuple[str | None, str]:
        """(drop reason or None, detected language) of one normalized document."""
        if not text.strip():
            return "empty", ""
        lang = ""
        if self.cfg.langid.enabled:
            detected = detect_language(text, self.cfg.langid.max_chars, self.cfg.langid.min_chars)
            lang = detected.code
            if not keep_language(detected, self.cfg.langid):
                return f"lang:{lang}", lang
        verdict = quality_verdict(text, self.checks)
        return (None if verdict.keep else f"quality:{verdict.reason}"), lang

    def __call__(self, raw_texts: list[str]) -> CleanedBatch:
        texts = [normalize_text(t, self.cfg.normalize) for t in raw_texts]
        reasons, languages = zip(*map(self.verdict, texts)) if texts else ((), ())
        kept = [t for t, r in zip(texts, reasons) if r is None]
        return CleanedBatch(
            reasons=list(reasons),
            languages=list(languages),
            words=np.array([len(t.split()) for t in texts], dtype=np.int64),
            chars=np.array([len(t) for t in texts], dtype=np.int64),
            texts=kept,
            hashes=np.array([exact_hash(t) for t in kept], dtype=np.uint64),
            signatures=self.hasher.signatures(kept) if self.hasher else None,
        )


_worker_cleaner: Cleaner | None = None


def _init_worker(cfg: CleaningConfig) -> None:
    global _worker_cleaner
    _worker_cleaner = Cleaner(cfg)


def _clean_in_worker(raw_texts: list[str]) -> CleanedBatch:
    assert _worker_cleaner is not None
    return _worker_cleaner(raw_texts)


class CleaningPool:
    """Runs `Cleaner` over batches, in order, in `workers` processes (in-process when workers <= 1)."""

    def __init__(self, cfg: CleaningConfig, workers: int):
        self.cfg, self.workers = cfg, workers
        self._pool = None

    def __enter__(self) -> CleaningPool:
        if self.workers > 1:
            # fork: workers inherit the imported modules; each loads the langid model once.
            self._pool = mp.get_context("fork").Pool(self.workers, _init_worker, (self.cfg,))
        else:
            _init_worker(self.cfg)
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.terminate() if exc[0] else self._pool.close()
            self._pool.join()

    def map(self, batches: Iterable[list]) -> Iterator[tuple[list, CleanedBatch]]:
        """(batch, result) in input order. Batches are lists of objects with a `.text`; at most
        2 * workers are in flight, so a huge source never queues up in memory (Pool.imap would
        read its whole input ahead)."""
        if self._pool is None:
            yield from ((batch, _clean_in_worker([d.text for d in batch])) for batch in batches)
            return
        in_flight: deque = deque()
        for batch in batches:
            in_flight.append((batch, self._pool.apply_async(_clean_in_worker, ([d.text for d in batch],))))
            if len(in_flight) >= 2 * self.workers:
                done, result = in_flight.popleft()
                yield done, result.get()
        while in_flight:
            done, result = in_flight.popleft()
            yield done, result.get()
