"""Stage 3 of `lmpretrain.prepare`: tokenize the surviving documents into shards.

Shards are planned before any tokenization, from the documents' character counts, so every run
with the same fingerprint cuts the same shards; a shard whose files are complete on disk is
skipped, which makes an interrupted run resume at shard granularity. Per-shard counts (tokens,
fallback tokens, words) go to `<work>/<stem>.stats.json` before the shard itself, so a resumed run
still reports them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from lmpretrain.atomic import atomic_write_json
from lmpretrain.data.sentences import sentence_ends
from lmpretrain.data.shard_format import SPLITS, ShardInfo, shard_is_complete, write_shard
from lmpretrain.prepare.cleaned import CleanedSource

ENCODE_BATCH = 1000  # documents per encode_batch call: bounds the memory held by Encoding objects


@dataclass
class ShardTask:
    info: ShardInfo
    rows: np.ndarray  # rows of the cleaned source that go into this shard, in order


def plan_shards(src: CleanedSource, size_chars: int, with_sentences: bool) -> list[ShardTask]:
    """Cut each split of a source into shards of about `size_chars` characters of text."""
    tasks = []
    for split in SPLITS:
        rows = np.flatnonzero(src.keep & (src.is_val == (split == "val")))
        if len(rows) == 0:
            continue
        shard_of_row = (np.cumsum(src.chars[rows]) - 1) // max(size_chars, 1)
        _, first = np.unique(shard_of_row, return_index=True)
        for number, group in enumerate(np.split(rows, first[1:])):
            tasks.append(ShardTask(ShardInfo(src.name, split, number, has_sentences=with_sentences), group))
    return tasks


def encode(tok: Tokenizer, texts: list[str], eos_id: int, with_sentences: bool):
    """Token ids per document with EOS appended, and (optionally) sentence ends per document."""
    docs, sents = [], [] if with_sentences else None
    for i in range(0, len(texts), ENCODE_BATCH):
        chunk = texts[i : i + ENCODE_BATCH]
        for enc, text in zip(tok.encode_batch(chunk, add_special_tokens=False), chunk):
            ids = np.array([*enc.ids, eos_id], dtype=np.int64)
            docs.append(ids)
            if sents is not None:
                sents.append(sentence_ends(enc, text, len(ids)))
    return docs, sents


class ShardWriter:
    def __init__(self, out: Path, work: Path, tok: Tokenizer, eos_id: int, dtype: np.dtype, fallback: np.ndarray):
        self.out, self.work, self.tok, self.eos_id, self.dtype, self.fallback = out, work, tok, eos_id, dtype, fallback

    def _stats_path(self, info: ShardInfo) -> Path:
        return self.work / f"{info.stem}.stats.json"

    def _flush(self, task: ShardTask, texts: list[str], words: int) -> dict:
        docs, sents = encode(self.tok, texts, self.eos_id, task.info.has_sentences)
        tokens = np.concatenate(docs)
        stats = {"documents": len(docs), "tokens": len(tokens), "words": words,
                 "fallback": int(self.fallback[tokens].sum()) if len(self.fallback) else 0}
        atomic_write_json(self._stats_path(task.info), stats)
        write_shard(self.out, task.info, docs, sents, self.dtype)
        return stats

    def write_source(self, src: CleanedSource, tasks: list[ShardTask], on_text: Callable[[str], None],
                     advance: Callable[[], None]) -> dict[str, dict]:
        """Write the source's shards (skipping complete ones); returns per-shard stats by stem."""
        task_of_row = np.full(len(src.hashes), -1, dtype=np.int64)
        for t, task in enumerate(tasks):
            task_of_row[task.rows] = t
        stats: dict[str, dict] = {}
        for task in tasks:
            stats_path = self._stats_path(task.info)
            if shard_is_complete(self.out, task.info, self.dtype) and stats_path.is_file():
                stats[task.info.stem] = json.loads(stats_path.read_text())
                advance()
        buffers: dict[int, list[str]] = {}
        for row, text in src.texts(np.flatnonzero(task_of_row >= 0)):
            on_text(text)
            t = int(task_of_row[row])
            if tasks[t].info.stem in stats:
                continue
            buffers.setdefault(t, []).append(text)
            if len(buffers[t]) == len(tasks[t].rows):
                words = int(src.words[tasks[t].rows].sum())
                stats[tasks[t].info.stem] = self._flush(tasks[t], buffers.pop(t), words)
                advance()
        for task in tasks:
            task.info.documents = stats[task.info.stem]["documents"]
            task.info.tokens = stats[task.info.stem]["tokens"]
        return stats
