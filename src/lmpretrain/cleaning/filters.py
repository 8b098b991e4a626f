"""Document quality heuristics in the spirit of Gopher (Rae et al. 2021, app. A) and C4.

Each filter is a `Check`: a measure of the document (a float) and a bound. A check returns a
`Verdict` (keep, reason, value), so the report can say how many documents each rule dropped and
the tests can pin the measured value. A bound of `None` in `QualityConfig` switches that rule off.

The defaults are Gopher's published thresholds, tuned for web pages of 50+ words; short documents
(package descriptions, verses) need lower `min_words` (see conf/prepare/default.yaml).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

import numpy as np

from lmpretrain.errors import ConfigError

_DIGIT = re.compile(r"\d")
_LETTER = re.compile(r"[^\W\d_]")  # a word character that is neither digit nor underscore


class Verdict(NamedTuple):
    keep: bool
    reason: str | None  # name of the check that dropped the document
    value: float | None = None  # what that check measured


KEEP = Verdict(True, None)


@dataclass
class QualityConfig:
    enabled: bool = True
    min_words: int | None = 50
    max_words: int | None = 100_000
    min_mean_word_length: float | None = 3.0
    max_mean_word_length: float | None = 10.0
    max_symbol_word_ratio: float | None = 0.1  # '#' and ellipses per word
    max_digit_ratio: float | None = None  # digits / non-space characters (tables, logs)
    min_alpha_word_fraction: float | None = 0.8  # words with at least one letter
    max_duplicate_line_fraction: float | None = 0.30
    max_duplicate_line_char_fraction: float | None = 0.20
    max_duplicate_paragraph_fraction: float | None = 0.30
    max_duplicate_paragraph_char_fraction: float | None = 0.20
    # n -> bound on the characters covered by the most frequent repeated n-gram
    max_top_ngram_char_fraction: dict[int, float] = field(default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16})
    # n -> bound on the characters covered by all repeated n-grams
    max_duplicate_ngram_char_fraction: dict[int, float] = field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    )
    min_terminal_punctuation_fraction: float | None = None  # C4: lines ending in . ! ? "

    def __post_init__(self) -> None:
        for name in ("max_top_ngram_char_fraction", "max_duplicate_ngram_char_fraction"):
            table = getattr(self, name) or {}
            if any(int(n) < 1 for n in table):
                raise ConfigError(f"quality.{name} keys are n-gram sizes and must be >= 1, got {list(table)}")
            setattr(self, name, {int(n): float(b) for n, b in table.items()})


class DocStats:
    """The pieces of a document the checks measure, each computed once on first use."""

    def __init__(self, text: str):
        self.text = text
        self._occurrences: dict[int, np.ndarray] = {}

    @cached_property
    def words(self) -> list[str]:
        return self.text.split()

    @cached_property
    def word_lengths(self) -> np.ndarray:
        return np.fromiter(map(len, self.words), dtype=np.int64, count=len(self.words))

    @cached_property
    def word_ids(self) -> np.ndarray:
        vocab: dict[str, int] = {}
        return np.array([vocab.setdefault(w, len(vocab)) for w in self.words], dtype=np.uint64)

    def ngram_occurrences(self, n: int) -> np.ndarray:
        """For each n-gram start position, how often that n-gram occurs in the document (memoized).
        A repeated (n+1)-gram contains a repeated n-gram, so once some m <= n has no repeats,
        neither has n: most documents skip the larger sizes entirely."""
        if n not in self._occurrences:
            ids = self.word_ids
            if len(ids) < n or any(m < n and occ.max(initial=0) < 2 for m, occ in self._occurrences.items()):
                self._occurrences[n] = np.ones(max(len(ids) - n + 1, 0), dtype=np.int64)
            else:
                # Polynomial hash of the n word ids (uint64 wraps); collisions are negligible here.
                keys = np.zeros(len(ids) - n + 1, dtype=np.uint64)
                for k in range(n):
                    keys = keys * np.uint64(1_000_003) + ids[k : len(ids) - n + 1 + k]
                _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
                self._occurrences[n] = counts[inverse]
        return self._occurrences[n]

    @cached_property
    def lines(self) -> list[str]:
        return [line.strip() for line in self.text.split("\n") if line.strip()]

    @cached_property
    def paragraphs(self) -> list[str]:
        return [p.strip() for p in re.split(r"\n\s*\n", self.text) if p.strip()]


# --- measures: each takes DocStats and returns one float ---


def mean_word_length(doc: DocStats) -> float:
    return float(doc.word_lengths.mean()) if doc.words else 0.0


def symbol_word_ratio(doc: DocStats) -> float:
    symbols = doc.text.count("#") + doc.text.count("...") + doc.text.count("…")
    return symbols / max(len(doc.words), 1)


def digit_ratio(doc: DocStats) -> float:
    return len(_DIGIT.findall(doc.text)) / max(int(doc.word_lengths.sum()), 1)


def alpha_word_fraction(doc: DocStats) -> float:
    return sum(1 for w in doc.words if _LETTER.search(w)) / max(len(doc.words), 1)


def duplicate_fractions(items: list[str]) -> tuple[float, float]:
    """(fraction of items that repeat an earlier one, fraction of their characters)."""
    seen: set[str] = set()
    dup_items = dup_chars = 0
    for item in items:
        if item in seen:
            dup_items, dup_chars = dup_items + 1, dup_chars + len(item)
        seen.add(item)
    total_chars = sum(map(len, items))
    return dup_items / max(len(items), 1), dup_chars / max(total_chars, 1)


def top_ngram_char_fraction(doc: DocStats, n: int) -> float:
    """Characters in all occurrences of the most frequent repeated n-gram / all word characters."""
    occ = doc.ngram_occurrences(n)
    if occ.size == 0 or occ.max() < 2:
        return 0.0
    start = int(np.argmax(occ))
    chars = int(doc.word_lengths[start : start + n].sum()) * int(occ[start])
    return chars / max(int(doc.word_lengths.sum()), 1)


def duplicate_ngram_char_fraction(doc: DocStats, n: int) -> float:
    """Characters of words inside any repeated n-gram (overlaps counted once) / all word characters."""
    occ = doc.ngram_occurrences(n)
    if occ.size == 0 or occ.max() < 2:
        return 0.0
    starts = np.flatnonzero(occ >= 2)
    cover = np.zeros(len(doc.words) + 1, dtype=np.int64)  # +1 at start, -1 after the n-gram
    np.add.at(cover, starts, 1)
    np.add.at(cover, starts + n, -1)
    covered = np.cumsum(cover[:-1]) > 0
    return int(doc.word_lengths[covered].sum()) / max(int(doc.word_lengths.sum()), 1)


def terminal_punctuation_fraction(doc: DocStats) -> float:
    ends = tuple('.!?"”’\'')
    return sum(line.endswith(ends) for line in doc.lines) / max(len(doc.lines), 1)


@dataclass(frozen=True)
class Check:
    name: str
    measure: Callable[[DocStats], float]
    bound: float
    upper: bool  # True: drop when the value is above the bound; False: below it

    def __call__(self, doc: DocStats) -> Verdict:
        value = float(self.measure(doc))
        keep = value <= self.bound if self.upper else value >= self.bound
        return Verdict(keep, None if keep else self.name, value)


def build_checks(cfg: QualityConfig) -> list[Check]:
    """The enabled checks, cheapest first (a document stops at its first failure)."""
    if not cfg.enabled:
        return []
    simple: list[tuple[str, Callable[[DocStats], float], float | None, bool]] = [
        ("min_words", lambda d: len(d.words), cfg.min_words, False),
        ("max_words", lambda d: len(d.words), cfg.max_words, True),
        ("min_mean_word_length", mean_word_length, cfg.min_mean_word_length, False),
        ("max_mean_word_length", mean_word_length, cfg.max_mean_word_length, True),
        ("max_symbol_word_ratio", symbol_word_ratio, cfg.max_symbol_word_ratio, True),
        ("max_digit_ratio", digit_ratio, cfg.max_digit_ratio, True),
        ("min_alpha_word_fraction", alpha_word_fraction, cfg.min_alpha_word_fraction, False),
        ("min_terminal_punctuation_fraction", terminal_punctuation_fraction,
         cfg.min_terminal_punctuation_fraction, False),
        ("max_duplicate_line_fraction", lambda d: duplicate_fractions(d.lines)[0],
         cfg.max_duplicate_line_fraction, True),
        ("max_duplicate_line_char_fraction", lambda d: duplicate_fractions(d.lines)[1],
         cfg.max_duplicate_line_char_fraction, True),
        ("max_duplicate_paragraph_fraction", lambda d: duplicate_fractions(d.paragraphs)[0],
         cfg.max_duplicate_paragraph_fraction, True),
        ("max_duplicate_paragraph_char_fraction", lambda d: duplicate_fractions(d.paragraphs)[1],
         cfg.max_duplicate_paragraph_char_fraction, True),
    ]
    checks = [Check(name, fn, float(bound), upper) for name, fn, bound, upper in simple if bound is not None]
    for n, bound in sorted(cfg.max_top_ngram_char_fraction.items()):
        checks.append(Check(f"max_top_{n}gram_char_fraction", lambda d, n=n: top_ngram_char_fraction(d, n), bound, True))
    for n, bound in sorted(cfg.max_duplicate_ngram_char_fraction.items()):
        checks.append(
            Check(f"max_duplicate_{n}gram_char_fraction", lambda d, n=n: duplicate_ngram_char_fraction(d, n), bound, True)
        )
    return checks


def quality_verdict(text: str, checks: list[Check]) -> Verdict:
    """Keep, or the first check the document fails."""
    doc = DocStats(text)
    for check in checks:
        verdict = check(doc)
        if not verdict.keep:
            return verdict
    return KEEP

