"""Stages 1-2 of `lmpretrain.prepare`: read and clean each source (checkpointed), then
deduplicate across sources and split train/val by document hash.

A cleaned source lives on disk until the shards are written: its surviving texts in
`<work>/<name>.docs.jsonl` (one JSON string per line) and their hashes, MinHash signatures and
sizes in `<work>/<name>.meta.npz`, written last, so an interrupted run skips finished sources.
Memory stays at O(documents * num_perm * 4 bytes) for the signatures, never the text.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmpretrain.atomic import atomic_write
from lmpretrain.cleaning.clean import CleaningPool
from lmpretrain.cleaning.dedup import DedupConfig, exact_duplicates, near_duplicates
from lmpretrain.cleaning.report import SourceStats
from lmpretrain.data.corpus import in_val_by_hash
from lmpretrain.errors import DataError
from lmpretrain.prepare.sources import RawDoc, SourceConfig, iter_documents


@dataclass
class CleanedSource:
    """The surviving documents of one source: their text sits in `spill` (one JSON string per
    line); the arrays have one row per line."""

    name: str
    spill: Path
    hashes: np.ndarray  # (n,) uint64 exact_hash
    signatures: np.ndarray | None  # (n, num_perm) uint32
    words: np.ndarray  # (n,) int64
    chars: np.ndarray  # (n,) int64
    stats: SourceStats
    keep: np.ndarray | None = None  # (n,) bool after dedup
    is_val: np.ndarray | None = None  # (n,) bool

    def texts(self, rows: np.ndarray | None = None) -> Iterator[tuple[int, str]]:
        """(row, text) of the spilled documents, all of them or the selected rows."""
        wanted = None if rows is None else np.zeros(len(self.hashes), dtype=bool)
        if wanted is not None:
            wanted[rows] = True
        with open(self.spill, encoding="utf-8") as f:
            for row, line in enumerate(f):
                if wanted is None or wanted[row]:
                    yield row, json.loads(line)


def _batches(docs: Iterator[RawDoc], size: int) -> Iterator[list[RawDoc]]:
    batch: list[RawDoc] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def clean_source(name: str, src: SourceConfig, work: Path, pool: CleaningPool, batch_size: int,
                 max_bad_examples: int, advance: Callable[[int], None]) -> CleanedSource:
    spill, meta = work / f"{name}.docs.jsonl", work / f"{name}.meta.npz"
    if meta.is_file():  # finished by an earlier, interrupted run with the same fingerprint
        return _load_cleaned(name, spill, meta)
    stats = SourceStats()
    parts: dict[str, list] = {"hashes": [], "signatures": [], "words": [], "chars": []}
    on_bad = lambda bad: stats.add_bad(bad.origin, bad.problem, max_bad_examples)
    tmp = spill.with_name(f".{spill.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        for docs, result in pool.map(_batches(iter_documents(name, src, on_bad), batch_size)):
            stats.add_batch(result)
            out.writelines(json.dumps(t, ensure_ascii=False) + "\n" for t in result.texts)
            kept = np.array([r is None for r in result.reasons])
            parts["hashes"].append(result.hashes)
            parts["words"].append(result.words[kept])
            parts["chars"].append(result.chars[kept])
            if result.signatures is not None:
                parts["signatures"].append(result.signatures)
            advance(len(docs))
    if not stats.stages or stats.stages["read"]["documents"] == 0:
        tmp.unlink()
        raise DataError(f"source {name!r} ({src.path}) has no documents; check its path, format and field, "
                        "or remove it from sources")
    tmp.replace(spill)
    arrays = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
    arrays["hashes"] = arrays["hashes"].astype(np.uint64)
    arrays["stats"] = np.array(json.dumps(stats.to_json()))

    def save(path: Path) -> None:
        with open(path, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(meta, save)  # last: its presence marks the source as done
    return _load_cleaned(name, spill, meta)


def _load_cleaned(name: str, spill: Path, meta: Path) -> CleanedSource:
    with np.load(meta) as z:
        sigs = z["signatures"] if z["signatures"].ndim == 2 else None
        return CleanedSource(name, spill, z["hashes"], sigs, z["words"].astype(np.int64), z["chars"].astype(np.int64),
                             SourceStats.from_json(json.loads(str(z["stats"]))))


def deduplicate(sources: list[CleanedSource], cfg: DedupConfig) -> None:
    """Set `keep` on every source: the earliest copy (in source order, then file order) survives."""
    sizes = [len(s.hashes) for s in sources]
    starts = np.cumsum([0, *sizes])
    keep = np.ones(starts[-1], dtype=bool)
    removed = {"exact_dedup": np.zeros(starts[-1], dtype=bool), "near_dedup": np.zeros(starts[-1], dtype=bool)}
    if cfg.exact:
        removed["exact_dedup"] = exact_duplicates(np.concatenate([s.hashes for s in sources])) >= 0
        keep &= ~removed["exact_dedup"]
    if cfg.near and all(s.signatures is not None for s in sources):
        unique = np.flatnonzero(keep)
        sigs = np.concatenate([s.signatures for s in sources])[unique]
        removed["near_dedup"][unique[near_duplicates(sigs, cfg) >= 0]] = True
        keep &= ~removed["near_dedup"]
    for src, a, b in zip(sources, starts[:-1], starts[1:]):
        src.keep = keep[a:b]
        for stage, mask in removed.items():
            src.stats.add_dedup(stage, src.words[mask[a:b]], src.chars[mask[a:b]])


def assign_split(sources: list[CleanedSource], val_fraction: float) -> None:
    """Validation = the documents `in_val_by_hash` puts there (training's hash split: crc32 of the
    cleaned text), so a document lands in the same split whatever else is in the corpus."""
    for src in sources:
        src.is_val = np.fromiter((in_val_by_hash(text, val_fraction) for _, text in src.texts()), dtype=bool,
                                 count=len(src.hashes))
