"""`SentencePairDataModule`: documents -> sentences -> BERT-style examples, streamed per epoch.

    task=nsp   : [CLS] A [SEP] B [SEP]; B is the true continuation of A (pair_label 1) or, half the
                 time, sentences of another document (pair_label 0)            (BERT)
    task=sop   : A and B consecutive segments of one document, swapped half the time
                 (pair_label 1 = swapped, 0 = in order)                         (ALBERT)
    task=texts : [CLS] text [SEP] per document, plus [CLS] text_b [SEP] as `input_ids_b` when
                 `field_b` names a second jsonl field (SimCSE's supervised pairs)

Segment ids (`token_type_ids`) are 0 for [CLS] A [SEP] and 1 for B [SEP]. Sentences come from
`lmpretrain.cleaning.sentences` mapped onto token offsets, so text is tokenized once per document.
Tokenized splits are cached under `cache_dir/pairs/<key>`; examples are drawn fresh each epoch
from a generator seeded by (seed, epoch, document), so a run, its resume and every rank agree.
Unlike `PackedTextDataModule`, the tokenized corpus is held in memory (ids only: ~4 bytes a token);
`max_documents` caps it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from lmpretrain.config import to_dict
from lmpretrain.data.corpus import SPLITS, TextSource, in_val_by_hash, is_jsonl, open_corpus
from lmpretrain.data.shard_writer import sentence_ends
from lmpretrain.data.streaming import StreamingDataModule
from lmpretrain.errors import ConfigError, DataError
from lmpretrain.paths import cache_root, data_root
from lmpretrain.tokenizers.build import TokenizerConfig, tokenizer_fingerprint

TASKS = ("nsp", "sop", "texts")


def choose_segments(doc: list[np.ndarray], max_tokens: int, rng: np.random.Generator):
    """A run of >= 2 consecutive sentences of `doc` fitting max_tokens (the first two always taken),
    cut at a random sentence boundary: (A sentences, B sentences)."""
    start = int(rng.integers(0, len(doc) - 1))
    end, total = start + 2, len(doc[start]) + len(doc[start + 1])
    while end < len(doc) and total + len(doc[end]) <= max_tokens:
        total += len(doc[end])
        end += 1
    cut = int(rng.integers(start + 1, end))
    return doc[start:cut], doc[cut:end]


def truncate_pair(a: np.ndarray, b: np.ndarray, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Trim the longer segment from its far end (A's start, B's end) until the pair fits, so the
    A|B boundary, which NSP and SOP are about, always survives."""
    while len(a) + len(b) > max_tokens:
        if len(a) > len(b):
            a = a[1:]
        else:
            b = b[:-1]
    return a, b


def make_pair(docs: list[list[np.ndarray]], index: int, task: str, max_tokens: int, rng: np.random.Generator):
    """(A tokens, B tokens, pair_label) from document `index` (which has >= 2 sentences)."""
    a_sents, b_sents = choose_segments(docs[index], max_tokens, rng)
    a, b = np.concatenate(a_sents), np.concatenate(b_sents)
    label = int(rng.random() < 0.5)
    if task == "nsp" and label == 0:  # B from a random other document, from a random sentence on
        other = int(rng.integers(0, len(docs) - 1))
        other += other >= index
        first = int(rng.integers(0, len(docs[other])))
        b = np.concatenate(docs[other][first:])
    a, b = truncate_pair(a, b, max_tokens)  # before a swap, so the true A|B boundary survives
    if task == "sop" and label == 1:
        a, b = b, a
    return a, b, label


def encode_pair(a: np.ndarray, b: np.ndarray | None, cls_id: int, sep_id: int, pad_id: int, length: int) -> dict:
    """[CLS] a [SEP] (b [SEP]) padded to `length`, with token_type_ids and attention_mask."""
    parts = [[cls_id], a, [sep_id]] + ([b, [sep_id]] if b is not None else [])
    ids = np.concatenate(parts).astype(np.int64)
    n_first = len(a) + 2
    out = {"input_ids": np.full(length, pad_id, dtype=np.int64), "token_type_ids": np.zeros(length, dtype=np.int64),
           "attention_mask": np.zeros(length, dtype=np.int64)}
    out["input_ids"][: len(ids)] = ids
    out["token_type_ids"][n_first : len(ids)] = 1
    out["attention_mask"][: len(ids)] = 1
    return {k: torch.from_numpy(v) for k, v in out.items()}


def trim_padding(batch: list[dict]) -> dict:
    """Stack examples, then cut the columns that are padding in every row (short texts in a
    block-sized buffer would otherwise cost a full block of compute)."""
    out = torch.utils.data.default_collate(batch)
    for suffix in ("", "_b"):
        if f"attention_mask{suffix}" in out:
            n = int(out[f"attention_mask{suffix}"].sum(1).max())
            for key in ("input_ids", "token_type_ids", "attention_mask"):
                if f"{key}{suffix}" in out:
                    out[f"{key}{suffix}"] = out[f"{key}{suffix}"][:, :n]
    return out


class PairExamples(IterableDataset):
    """The example stream of one split: documents in a seeded order per epoch, sharded by rank and
    worker exactly like `PackedBlocks` (batch k of a rank goes to worker k % workers)."""

    def __init__(self, docs, docs_b, task: str, ids: dict, block_size: int, batch_size: int, shuffle: bool,
                 seed: int, start_batch: int = 0, rank: int = 0, world_size: int = 1):
        self.docs, self.docs_b, self.task, self.ids = docs, docs_b, task, ids
        self.block_size, self.batch_size, self.shuffle, self.seed = block_size, batch_size, shuffle, seed
        self.start_batch, self.rank, self.world_size = start_batch, rank, world_size

    def example(self, epoch: int, i: int) -> dict:
        rng = np.random.default_rng([self.seed, epoch, i])
        cls, sep, pad = self.ids["cls"], self.ids["sep"], self.ids["pad"]
        if self.task == "texts":
            out = encode_pair(self.docs[i][0][: self.block_size - 2], None, cls, sep, pad, self.block_size)
            if self.docs_b is not None:
                b = encode_pair(self.docs_b[i][0][: self.block_size - 2], None, cls, sep, pad, self.block_size)
                out.update({f"{k}_b": v for k, v in b.items() if k != "token_type_ids"})
            return out
        a, b, label = make_pair(self.docs, i, self.task, self.block_size - 3, rng)
        return {**encode_pair(a, b, cls, sep, pad, self.block_size), "pair_label": torch.tensor(label)}

    def stream(self) -> Iterator[tuple[int, int]]:
        epoch = 0
        while True:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.docs)) if self.shuffle \
                else np.arange(len(self.docs))
            yield from ((epoch, int(i)) for i in order[self.rank :: self.world_size])
            if not self.shuffle:
                return
            epoch += 1

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for k, (epoch, i) in enumerate(self.stream()):
            batch = k // self.batch_size
            if batch >= self.start_batch and (batch - self.start_batch) % workers == worker:
                yield self.example(epoch, i)


def read_records(paths: list[Path], field: str, field_b: str, val_fraction: float, part: str):
    """(text, text_b) of one split from jsonl files; the split goes by the hash of `field`."""
    for path in paths:
        if not is_jsonl(path):
            raise DataError(f"{path}: data.field_b needs jsonl files (one record per line with both fields)")
        with (gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")) as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                record = json.loads(line)
                if field not in record or field_b not in record:
                    raise DataError(f"{path}:{lineno}: needs fields {field!r} and {field_b!r}; set data.field(_b)")
                if in_val_by_hash(record[field], val_fraction) == (part == "val"):
                    yield record[field], record[field_b]


class SentencePairDataModule(StreamingDataModule):
    collate_fn = staticmethod(trim_padding)

    def __init__(
        self,
        files: list[str],
        task: str = "sop",
        tokenizer: dict | None = None,
        block_size: int = 128,
        batch_size: int = 32,
        field: str = "text",
        field_b: str | None = None,
        split: str = "hash",
        val_fraction: float = 0.05,
        max_documents: int | None = None,
        cls_token: str = "[CLS]",
        sep_token: str = "[SEP]",
        pad_token: str = "[PAD]",
        num_workers: int = 0,
        seed: int = 0,
        data_dir: str | None = None,
        cache_dir: str | None = None,
        checksums: dict[str, str] | None = None,
        urls: dict[str, str] | None = None,
    ):
        super().__init__(block_size, batch_size, num_workers, seed)
        if task not in TASKS:
            raise ConfigError(f"data.task={task!r} must be one of {TASKS}")
        if field_b is not None and task != "texts":
            raise ConfigError(f"data.field_b is for data.task=texts (SimCSE pairs), not {task}; unset it")
        if block_size < 8:
            raise ConfigError(f"data.block_size={block_size} is too short for [CLS] A [SEP] B [SEP]")
        self.files, self.task, self.field, self.field_b = list(files), task, field, field_b
        self.split, self.val_fraction, self.max_documents = split, val_fraction, max_documents
        self.tokenizer_cfg = TokenizerConfig(**to_dict(tokenizer))  # plain lists: Hydra passes ListConfigs
        self.special = {"cls": cls_token, "sep": sep_token, "pad": pad_token}
        self.data_dir = Path(data_dir) if data_dir else data_root()
        self.cache_dir = Path(cache_dir) if cache_dir else cache_root()
        self.checksums, self.urls = dict(checksums or {}), dict(urls or {})
        self.tokenizer = None
        self.docs: dict[str, list] = {}
        self.docs_b: dict[str, list | None] = {}

    @property
    def vocab_size(self) -> int:
        self.prepare_data()
        return self.tokenizer.get_vocab_size()

    def prepare_data(self) -> None:
        if self.docs:
            return
        source, fingerprint, self.tokenizer = open_corpus(
            self.files, self.field, self.split, self.val_fraction, self.tokenizer_cfg, self.data_dir, self.cache_dir,
            self.checksums, self.urls)
        paths = source.paths
        self.ids = {}
        for role, token in self.special.items():
            if (tid := self.tokenizer.token_to_id(token)) is None:
                raise ConfigError(f"data.{role}_token={token!r} is not in the tokenizer; use tokenizer=wordpiece "
                                  f"or list {token!r} in tokenizer.special_tokens")
            self.ids[role] = tid
        key = hashlib.sha256(json.dumps(
            [fingerprint, tokenizer_fingerprint(self.tokenizer), self.field, self.field_b, self.split,
             self.val_fraction, self.max_documents, self.task == "texts", asdict(self.tokenizer_cfg)],
            sort_keys=True).encode()).hexdigest()[:16]
        for part in SPLITS:
            cached = self.cache_dir / "pairs" / key / f"{part}.npz"
            if not cached.is_file():
                self._tokenize(source, paths, part, cached)
            with np.load(cached) as z:
                self.docs[part] = unflatten(z["tokens"], z["sent_ends"], z["doc_ends"])
                self.docs_b[part] = unflatten(z["tokens_b"], z["ends_b"], np.arange(1, len(z["ends_b"]) + 1)) \
                    if self.field_b else None
            if self.task != "texts":  # a pair needs two sentences
                self.docs[part] = [d for d in self.docs[part] if len(d) >= 2]
            if len(self.docs[part]) < 2:
                raise DataError(f"the {part} split of {self.files} has {len(self.docs[part])} usable documents "
                                f"(task={self.task} needs >= 2{' with >= 2 sentences' if self.task != 'texts' else ''}); "
                                f"use a bigger corpus or raise data.val_fraction")

    def _tokenize(self, source: TextSource, paths: list[Path], part: str, out: Path) -> None:
        if self.field_b:
            records = list(read_records(paths, self.field, self.field_b, self.val_fraction, part))
            texts, texts_b = [r[0] for r in records], [r[1] for r in records]
        else:
            texts, texts_b = list(source.texts(part)), None
        texts = texts[: self.max_documents]
        encs = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        encs_b = self.tokenizer.encode_batch(texts_b[: len(texts)], add_special_tokens=False) if texts_b else None
        tokens, sent_ends, doc_ends, tokens_b, n_tok = [], [], [], [], 0
        for i, (enc, text) in enumerate(zip(encs, texts)):
            if not enc.ids or (encs_b is not None and not encs_b[i].ids):
                continue  # an empty text (or half of a pair) teaches nothing
            ids = np.asarray(enc.ids, dtype=np.int32)
            # task=texts keeps each document whole, as one "sentence"
            ends = np.array([len(ids)]) if self.task == "texts" else sentence_ends(enc, text, len(ids))
            tokens.append(ids)
            sent_ends.extend(n_tok + ends)
            n_tok += len(ids)
            doc_ends.append(len(sent_ends))
            if encs_b is not None:
                tokens_b.append(np.asarray(encs_b[i].ids, dtype=np.int32))
        arrays = {"tokens": _cat(tokens), "sent_ends": np.asarray(sent_ends, np.int64),
                  "doc_ends": np.asarray(doc_ends, np.int64)}
        if encs_b is not None:
            arrays.update(tokens_b=_cat(tokens_b), ends_b=np.cumsum([len(t) for t in tokens_b]).astype(np.int64))
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f"{out.stem}.tmp{os.getpid()}.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, out)  # atomic: a concurrent rank never reads half a file

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()

    def dataset(self, part: str) -> IterableDataset:
        rank, world = self.rank_and_world()
        return PairExamples(self.docs[part], self.docs_b[part], self.task, self.ids, self.block_size,
                            self.batch_size, shuffle=part == "train", seed=self.seed,
                            start_batch=self.train_batches_seen if part == "train" else 0, rank=rank,
                            world_size=world)


def _cat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.zeros(0, np.int32)


def unflatten(tokens: np.ndarray, sent_ends: np.ndarray, doc_ends: np.ndarray) -> list[list[np.ndarray]]:
    """Flat tokens + sentence end offsets + document end (in sentences) -> docs of sentences."""
    sentences = np.split(tokens.astype(np.int64), sent_ends[:-1]) if len(sent_ends) else []
    return [sentences[a:b] for a, b in zip(np.r_[0, doc_ends[:-1]], doc_ends)]
