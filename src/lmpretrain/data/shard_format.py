"""Tokenized shards: the on-disk format that prepare writes and training memory-maps.

An output directory holds::

    manifest.json                      written last: if it exists, the directory is complete
    tokenizer.json                     the tokenizer that produced every id below
    report.json, plots/*.png           the quality report (see cleaning/report.py)
    <source>-<split>-<NNNNN>.bin       token ids, flat, little-endian, no header
    <source>-<split>-<NNNNN>.idx.npy   int64 (n_documents,): end offset of each document
    <source>-<split>-<NNNNN>.sent.npy  int64 (n_sentences,): end offset of each sentence
                                       (only when prepare ran with sentences.enabled=true)

`split` is `train` or `val`; `NNNNN` counts shards of one (source, split) from 00000. The `.bin`
dtype is `manifest["dtype"]`: uint16 when vocab_size <= 65535, else uint32. Every document is
followed by `eos_id`, so document i is `bin[idx[i-1]:idx[i]]` (start 0 for i=0), EOS included,
and `idx[-1] == len(bin)`. Sentence offsets use the same convention; the last sentence of a
document ends at the document's end (its EOS included), so idx is a subset of sent.

manifest.json::

    {"format": "lmpretrain.shards", "version": 1,
     "fingerprint": "<sha256 of input files (path, size, mtime) + the config that shapes output>",
     "dtype": "uint16", "vocab_size": 8000, "eos_id": 0,
     "tokenizer": {"file": "tokenizer.json", "sha256": "<hex of the file's bytes>"},
     "sources": {"<name>": {"path": ..., "format": ..., "documents": {"train": n, "val": n},
                            "tokens": {"train": n, "val": n}}},
     "counts": {"train": {"documents": n, "tokens": n}, "val": {"documents": n, "tokens": n}},
     "config": {<the resolved prepare config>},
     "shards": [{"source": "wiki", "split": "train", "number": 0,
                 "bin": "wiki-train-00000.bin", "idx": "wiki-train-00000.idx.npy",
                 "sent": null, "documents": n, "tokens": n}, ...]}

Every file is written to a temporary name and renamed (`os.replace`) into place, so a reader never
sees a partial file; within a shard the `.idx.npy` is renamed last and marks the shard complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lmpretrain.atomic import atomic_write
from lmpretrain.errors import DataError

FORMAT, VERSION = "lmpretrain.shards", 1
SPLITS = ("train", "val")


@dataclass
class ShardInfo:
    source: str
    split: str  # "train" | "val"
    number: int
    documents: int = 0
    tokens: int = 0
    has_sentences: bool = False

    @property
    def stem(self) -> str:
        return f"{self.source}-{self.split}-{self.number:05d}"

    @property
    def bin(self) -> str:
        return f"{self.stem}.bin"

    @property
    def idx(self) -> str:
        return f"{self.stem}.idx.npy"

    @property
    def sent(self) -> str | None:
        return f"{self.stem}.sent.npy" if self.has_sentences else None

    def to_json(self) -> dict:
        return {**asdict(self), "bin": self.bin, "idx": self.idx, "sent": self.sent}

    @classmethod
    def from_json(cls, d: dict) -> ShardInfo:
        return cls(d["source"], d["split"], d["number"], d["documents"], d["tokens"], d.get("sent") is not None)


@dataclass
class Manifest:
    dtype: np.dtype
    vocab_size: int
    eos_id: int
    fingerprint: str
    tokenizer_sha256: str
    shards: list[ShardInfo]
    raw: dict = field(repr=False, default_factory=dict)  # the whole manifest.json

    def shards_for(self, split: str, source: str | None = None) -> list[ShardInfo]:
        return [s for s in self.shards if s.split == split and (source is None or s.source == source)]


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 65535 else np.dtype("<u4")


def read_manifest(directory: str | os.PathLike) -> Manifest:
    path = Path(directory) / "manifest.json"
    if not path.is_file():
        raise DataError(f"{path} does not exist; run `python -m lmpretrain.prepare output_dir={directory}` first")
    raw = json.loads(path.read_text())
    if raw.get("format") != FORMAT or raw.get("version") != VERSION:
        raise DataError(f"{path} is not an {FORMAT} v{VERSION} manifest; re-run lmpretrain.prepare")
    return Manifest(
        dtype=np.dtype(raw["dtype"]).newbyteorder("<"),
        vocab_size=raw["vocab_size"],
        eos_id=raw["eos_id"],
        fingerprint=raw["fingerprint"],
        tokenizer_sha256=raw["tokenizer"]["sha256"],
        shards=[ShardInfo.from_json(s) for s in raw["shards"]],
        raw=raw,
    )


def open_shard(directory: str | os.PathLike, info: ShardInfo, dtype: np.dtype | None = None) -> np.memmap:
    """The shard's tokens, memory-mapped read-only, shape (tokens,)."""
    dtype = dtype if dtype is not None else read_manifest(directory).dtype
    if info.tokens == 0:
        return np.zeros(0, dtype=dtype)  # np.memmap cannot map an empty file
    return np.memmap(Path(directory) / info.bin, dtype=dtype, mode="r", shape=(info.tokens,))


def open_index(directory: str | os.PathLike, info: ShardInfo, sentences: bool = False) -> np.ndarray:
    """Document (or sentence) end offsets, int64, memory-mapped."""
    name = info.sent if sentences else info.idx
    if name is None:
        raise DataError(f"shard {info.stem} has no sentence index; re-run prepare with sentences.enabled=true")
    return np.load(Path(directory) / name, mmap_mode="r")


# --- writing (used by prepare) ---


def _save_npy(array: np.ndarray) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object, so np.save does not append ".npy" to the tmp name
            np.save(f, array)

    return write


def write_shard(directory: Path, info: ShardInfo, docs: list[np.ndarray], sentence_ends: list[np.ndarray] | None,
                dtype: np.dtype) -> None:
    """Write one shard from per-document token arrays (EOS already appended); idx goes last."""
    lengths = np.array([len(d) for d in docs], dtype=np.int64)
    ends = np.cumsum(lengths)
    tokens = np.concatenate(docs).astype(dtype) if docs else np.zeros(0, dtype)
    atomic_write(directory / info.bin, lambda tmp: tokens.tofile(tmp))
    if sentence_ends is not None:
        starts = ends - lengths
        sent = np.concatenate([s + start for s, start in zip(sentence_ends, starts)]) if docs else np.zeros(0, np.int64)
        atomic_write(directory / info.sent, _save_npy(sent.astype(np.int64)))
    atomic_write(directory / info.idx, _save_npy(ends))
    info.documents, info.tokens = len(docs), int(ends[-1]) if len(ends) else 0


def shard_is_complete(directory: Path, info: ShardInfo, dtype: np.dtype) -> bool:
    """True when the idx (written last) exists and agrees with the .bin's size."""
    idx_path, bin_path = directory / info.idx, directory / info.bin
    if not idx_path.is_file() or not bin_path.is_file():
        return False
    if info.has_sentences and not (directory / info.sent).is_file():
        return False
    ends = np.load(idx_path)
    tokens = int(ends[-1]) if len(ends) else 0
    return bin_path.stat().st_size == tokens * dtype.itemsize
