"""MinHash + LSH near-dedup: time for 10k vs 100k documents (should grow ~10x, i.e. linearly) and
recall/precision on real paragraphs with injected near-duplicates.

    python bench/dedup.py [--small 10000] [--large 100000]

Documents are 30-word windows over all shared corpora (../shared/data), concatenated for size.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from lmpretrain.cleaning.dedup import DedupConfig, MinHasher, exact_duplicates, exact_hash, near_duplicates
from lmpretrain.cleaning.dedup_eval import measure_dedup_quality
from lmpretrain.data.readers import read_fields
from lmpretrain.paths import data_root

FIELDS = {"debian_packages.train.jsonl.gz": "description", "spam.train.jsonl.gz": "text",
          "translation_en_es.train.jsonl.gz": "en", "qa_wordnet.train.jsonl.gz": "context",
          "similarity_lee.jsonl": "text_a"}


def corpus_words() -> list[str]:
    root = data_root()
    words = (root / "tinyshakespeare.txt").read_text(encoding="utf-8").split()
    for name, field in FIELDS.items():
        for _, (text,) in read_fields(root / name, (field,)):
            words += text.split()
    return words


def windows(words: list[str], n_docs: int, size: int = 30) -> list[str]:
    stride = min(size, (len(words) - size) // n_docs)
    return [" ".join(words[i * stride : i * stride + size]) for i in range(n_docs)]


def dedup_seconds(texts: list[str], cfg: DedupConfig) -> tuple[float, int]:
    start = time.perf_counter()
    dup_of = exact_duplicates(np.array([exact_hash(t) for t in texts], dtype=np.uint64))
    unique = np.flatnonzero(dup_of < 0)
    sigs = MinHasher(cfg.num_perm, cfg.ngram, cfg.seed).signatures([texts[i] for i in unique])
    near = near_duplicates(sigs, cfg)
    return time.perf_counter() - start, int((dup_of >= 0).sum() + (near >= 0).sum())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=100_000)
    args = parser.parse_args()
    cfg = DedupConfig()
    words = corpus_words()
    large = windows(words, args.large)
    small = large[:: args.large // args.small][: args.small]  # same kind of text, spread over the corpus
    dedup_seconds(small[:1000], cfg)  # warm-up
    t_small, removed_small = dedup_seconds(small, cfg)
    t_large, removed_large = dedup_seconds(large, cfg)
    print(f"corpus: {len(words):,} words; documents of 30 words; threshold={cfg.threshold} "
          f"num_perm={cfg.num_perm} ngram={cfg.ngram}")
    print(f"{args.small:>7,} docs: {t_small:6.2f} s ({args.small / t_small:8,.0f} docs/s), removed {removed_small}")
    print(f"{args.large:>7,} docs: {t_large:6.2f} s ({args.large / t_large:8,.0f} docs/s), removed {removed_large}")
    print(f"time ratio large/small: {t_large / t_small:.2f} for {args.large / args.small:.0f}x documents "
          f"(linear = {args.large / args.small:.0f}, quadratic = {(args.large / args.small) ** 2:.0f})")

    paragraphs = windows(words, 6000, size=80)
    quality = measure_dedup_quality(paragraphs, n_copies=1000, cfg=cfg, seed=0)
    print(f"injected near-duplicates (80-word paragraphs, ~3% of words edited): {quality.injected}; "
          f"removed {quality.removed} of {len(paragraphs) + quality.injected}")
    print(f"recall {quality.recall:.3f}  precision {quality.precision:.3f}  (targets: >= 0.9, >= 0.95)")


if __name__ == "__main__":
    main()
