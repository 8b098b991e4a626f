"""Corpus statistics gathered while preparing, written as `report.json` plus PNG plots.

Per source: documents/words/characters left after each stage (read, normalize, langid, quality,
exact_dedup, near_dedup) and tokens at the end, why documents were dropped, duplicate rates,
language mix, document-length histograms, vocabulary coverage (unknown and byte-fallback tokens,
tokens per word) and the most frequent word n-grams of a sample. "Words" before tokenization are
whitespace-separated words: the tokenizer is trained only after cleaning.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmpretrain.atomic import atomic_write
from lmpretrain.cleaning.clean import CleanedBatch, stage_of

STAGES = ("read", "normalize", "langid", "quality", "exact_dedup", "near_dedup")
LENGTH_BIN_EDGES = [0, *(2**k for k in range(21))]  # words: 0, 1, 2, 4, ..., 2^20
_WORD = re.compile(r"\w+")


@dataclass
class ReportConfig:
    enabled: bool = True
    plots: bool = True
    ngram_sizes: list[int] = field(default_factory=lambda: [1, 2, 3])
    top_k: int = 20
    ngram_sample_docs: int = 2000  # per source: n-grams are counted on the first kept documents
    bad_record_examples: int = 20


@dataclass
class SourceStats:
    """Everything the report says about one source, accumulated batch by batch."""

    stages: dict[str, dict[str, int]] = field(default_factory=dict)  # stage -> documents/words/chars left
    drop_reasons: Counter = field(default_factory=Counter)
    languages: Counter = field(default_factory=Counter)
    length_read: list[int] = field(default_factory=lambda: [0] * (len(LENGTH_BIN_EDGES) - 1))
    length_kept: list[int] = field(default_factory=lambda: [0] * (len(LENGTH_BIN_EDGES) - 1))
    bad_records: int = 0
    bad_examples: list[str] = field(default_factory=list)

    def _add(self, stage: str, docs: int, words: int, chars: int) -> None:
        left = self.stages.setdefault(stage, {"documents": 0, "words": 0, "chars": 0})
        left["documents"] += docs
        left["words"] += words
        left["chars"] += chars

    def add_batch(self, batch: CleanedBatch) -> None:
        # rank = index in STAGES of the stage that dropped the document; kept ones rank past the end
        rank = np.array([STAGES.index(stage_of(r)) if r else len(STAGES) for r in batch.reasons], dtype=np.int64)
        for k, stage in enumerate(STAGES[:4]):  # read, normalize, langid, quality
            left = rank > k
            self._add(stage, int(left.sum()), int(batch.words[left].sum()), int(batch.chars[left].sum()))
        self.languages.update(lang for lang in batch.languages if lang)
        self.drop_reasons.update(r for r in batch.reasons if r is not None)
        self.length_read = _add_hist(self.length_read, batch.words)
        self.length_kept = _add_hist(self.length_kept, batch.words[rank == len(STAGES)])

    def add_dedup(self, stage: str, removed_words: np.ndarray, removed_chars: np.ndarray) -> None:
        """`stage` (exact_dedup, near_dedup) leaves the previous stage's counts minus its removals."""
        prev = self.stages[STAGES[STAGES.index(stage) - 1]]
        self.stages[stage] = {"documents": prev["documents"] - len(removed_words),
                              "words": prev["words"] - int(removed_words.sum()),
                              "chars": prev["chars"] - int(removed_chars.sum())}
        self.drop_reasons[stage] += len(removed_words)

    def add_bad(self, origin: str, problem: str, max_examples: int) -> None:
        self.bad_records += 1
        if len(self.bad_examples) < max_examples:
            self.bad_examples.append(f"{origin}: {problem}")

    def to_json(self) -> dict:
        return {"stages": self.stages, "drop_reasons": dict(self.drop_reasons), "languages": dict(self.languages),
                "length_read": self.length_read, "length_kept": self.length_kept,
                "bad_records": self.bad_records, "bad_examples": self.bad_examples}

    @classmethod
    def from_json(cls, d: dict) -> SourceStats:
        return cls(d["stages"], Counter(d["drop_reasons"]), Counter(d["languages"]), d["length_read"],
                   d["length_kept"], d["bad_records"], d["bad_examples"])


def _add_hist(hist: list[int], words: np.ndarray) -> list[int]:
    counts, _ = np.histogram(np.minimum(words, LENGTH_BIN_EDGES[-1] - 1), bins=LENGTH_BIN_EDGES)
    return [a + int(b) for a, b in zip(hist, counts)]


class NgramSample:
    """Word n-gram counts over the first `max_docs` documents of one source."""

    def __init__(self, sizes: list[int], max_docs: int):
        self.sizes, self.max_docs, self.docs = sizes, max_docs, 0
        self.counts: dict[int, Counter] = {n: Counter() for n in sizes}

    def add(self, text: str) -> None:
        if self.docs >= self.max_docs:
            return
        self.docs += 1
        words = _WORD.findall(text.lower())
        for n in self.sizes:
            self.counts[n].update(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))

    def top(self, k: int) -> dict[str, list]:
        return {str(n): [[g, c] for g, c in self.counts[n].most_common(k)] for n in self.sizes}


def _byte_level_chars() -> dict[str, int]:
    """GPT-2's byte -> printable character table, inverted: which character stands for which byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def fallback_mask(tokenizer) -> np.ndarray:
    """(vocab_size,) bool: token ids that mean "the tokenizer did not know this text": the unknown
    token, SentencePiece byte pieces <0xAB>, and byte-level tokens holding one byte of a multi-byte
    character (only a fragment of a character was in the vocabulary)."""
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    mask = np.zeros(tokenizer.get_vocab_size(with_added_tokens=True), dtype=bool)
    byte_level = '"ByteLevel"' in tokenizer.to_str()
    byte_of = _byte_level_chars()
    unk = {t for t in ("[UNK]", "<unk>", "<|unk|>") if t in vocab}
    for token, i in vocab.items():
        if token in unk or re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token) or byte_level and len(token) == 1 and byte_of.get(token, 0) >= 0x80:
            mask[i] = True
    return mask


def coverage(stats: dict[str, int]) -> dict[str, float | int]:
    """Rates from summed counts {tokens, fallback, words}."""
    tokens = max(stats.get("tokens", 0), 1)
    return {**stats, "fallback_rate": stats.get("fallback", 0) / tokens,
            "tokens_per_word": stats.get("tokens", 0) / max(stats.get("words", 0), 1)}


def source_report(stats: SourceStats, splits: dict, vocab: dict, ngrams: NgramSample, top_k: int) -> dict:
    read = max(stats.stages["read"]["documents"], 1)
    return {
        "stages": stats.stages,
        "drop_reasons": dict(stats.drop_reasons.most_common()),
        "duplicates": {"exact": stats.drop_reasons["exact_dedup"], "near": stats.drop_reasons["near_dedup"],
                       "exact_rate": stats.drop_reasons["exact_dedup"] / read,
                       "near_rate": stats.drop_reasons["near_dedup"] / read},
        "languages": dict(stats.languages.most_common()),
        "splits": splits,
        "length_histogram": {"bin_edges_words": LENGTH_BIN_EDGES, "read": stats.length_read,
                             "kept": stats.length_kept},
        "vocab_coverage": {split: coverage(v) for split, v in vocab.items()},
        "top_ngrams": ngrams.top(top_k),
        "bad_records": {"count": stats.bad_records, "examples": stats.bad_examples},
    }


# --- plots (matplotlib, Agg: no display needed) ---


def _figure(n_panels: int = 1, width: float = 10, height: float = 4):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n_panels, figsize=(width, height), squeeze=False)
    return plt, fig, list(axes[0])


def _save(plt, fig, path: Path) -> str:
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return path.name


def plot_stages(sources: dict, path: Path) -> str:
    """Documents and words left after each stage, one line per source (log scale)."""
    plt, fig, (docs_ax, words_ax) = _figure(2, 12, 4.5)
    for name, rep in sources.items():
        stages = [s for s in STAGES if s in rep["stages"]]
        docs_ax.plot(stages, [rep["stages"][s]["documents"] for s in stages], marker="o", label=name)
        words_ax.plot(stages, [rep["stages"][s]["words"] for s in stages], marker="o", label=name)
    for ax, what in ((docs_ax, "documents"), (words_ax, "words")):
        ax.set_yscale("log")
        ax.set_title(f"{what} left after each stage")
        ax.tick_params(axis="x", rotation=30)
    docs_ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_drop_reasons(sources: dict, path: Path) -> str:
    """Why documents were dropped, all sources stacked; languages are one bar (see languages.png)."""
    merged = {name: Counter() for name in sources}
    for name, rep in sources.items():
        for reason, count in rep["drop_reasons"].items():
            merged[name]["langid" if reason.startswith("lang:") else reason] += count
    reasons = sorted({r for counts in merged.values() for r in counts})
    plt, fig, (ax,) = _figure(1, 10, 0.8 + 0.3 * max(len(reasons), 1))
    left = np.zeros(len(reasons))
    for name, counts_of in merged.items():
        counts = np.array([counts_of.get(r, 0) for r in reasons])
        ax.barh(reasons, counts, left=left, label=name)
        left += counts
    ax.set_xlabel("documents dropped")
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_languages(sources: dict, path: Path, top: int = 8) -> str:
    """Share of each detected language per source (before the language filter)."""
    plt, fig, (ax,) = _figure(1, 10, 0.8 + 0.5 * len(sources))
    palette = plt.get_cmap("tab20").colors
    color: dict[str, tuple] = {}  # one colour per language across all sources
    for row, (name, rep) in enumerate(sources.items()):
        total, left = max(sum(rep["languages"].values()), 1), 0.0
        for lang, count in list(rep["languages"].items())[:top]:
            ax.barh(name, count / total, left=left, color=color.setdefault(lang, palette[len(color) % len(palette)]))
            if count / total > 0.04:
                ax.text(left + count / total / 2, row, lang, ha="center", va="center", fontsize=8)
            left += count / total
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"fraction of documents (top {top} languages)")
    return _save(plt, fig, path)


def plot_lengths(sources: dict, path: Path) -> str:
    """Words per document, read vs kept, per source (log-2 bins)."""
    plt, fig, axes = _figure(len(sources), 4 * len(sources), 3.5)
    for ax, (name, rep) in zip(axes, sources.items()):
        edges = np.array(rep["length_histogram"]["bin_edges_words"][1:])  # right edges; first bin is 0 words
        for key in ("read", "kept"):
            ax.step(edges, rep["length_histogram"][key], where="pre", label=key)
        ax.set_xscale("log", base=2)
        ax.set_title(name)
        ax.set_xlabel("words per document")
        ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_top_ngrams(sources: dict, path: Path, n: str = "2", top: int = 15) -> str:
    plt, fig, axes = _figure(len(sources), 4 * len(sources), 0.8 + 0.25 * top)
    for ax, (name, rep) in zip(axes, sources.items()):
        pairs = rep["top_ngrams"].get(n, [])[:top][::-1]
        ax.barh([g for g, _ in pairs], [c for _, c in pairs])
        ax.set_title(f"{name}: top {n}-grams (sample)", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    return _save(plt, fig, path)


def plot_coverage(sources: dict, path: Path) -> str:
    """Tokens per word and fallback (unknown / byte-piece) rate, per source and split."""
    plt, fig, (fert_ax, fb_ax) = _figure(2, 10, 3.5)
    labels, fert, fallback = [], [], []
    for name, rep in sources.items():
        for split, cov in rep["vocab_coverage"].items():
            labels.append(f"{name}/{split}")
            fert.append(cov["tokens_per_word"])
            fallback.append(100 * cov["fallback_rate"])
    fert_ax.barh(labels, fert)
    fert_ax.set_xlabel("tokens per word")
    fb_ax.barh(labels, fallback)
    fb_ax.set_xlabel("unknown + byte-fallback tokens (%)")
    return _save(plt, fig, path)


# The plots write_plots draws, in its order (prepare lists them as its own files before writing).
PLOT_FILES = ("stages.png", "drop_reasons.png", "languages.png", "lengths.png", "top_ngrams.png", "vocab_coverage.png")


def write_plots(report: dict, directory: Path) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    sources = report["sources"]
    plots = (plot_stages, plot_drop_reasons, plot_languages, plot_lengths, plot_top_ngrams, plot_coverage)
    return [f"{directory.name}/{plot(sources, directory / name)}" for plot, name in zip(plots, PLOT_FILES)]
