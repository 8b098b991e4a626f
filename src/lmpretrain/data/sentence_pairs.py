"""`SentencePairDataModule`: documents -> sentences -> BERT-style examples, streamed per epoch.

    examples=nsp   : [CLS] A [SEP] B [SEP]; B is the true continuation of A (pair_label 1) or, half the
                 time, sentences of another document (pair_label 0)            (BERT)
    examples=sop   : A and B consecutive segments of one document, swapped half the time
                 (pair_label 1 = swapped, 0 = in order)                         (ALBERT)
    examples=texts : [CLS] text [SEP] per document, plus [CLS] text_b [SEP] as `input_ids_b` when
                 `field_b` names a second jsonl field (SimCSE's supervised pairs)

Segment ids (`token_type_ids`) are 0 for [CLS] A [SEP] and 1 for B [SEP]. Sentences come from
`lmpretrain.data.sentences` mapped onto token offsets, so text is tokenized once per document.
Tokenized splits are cached under `cache_dir/pairs/<key>/<split>/` as flat arrays (written while
the corpus streams through the tokenizer, batch by batch) and read back through `np.memmap`, so
neither tokenizing nor training holds the corpus in memory; `TokenizedDocs` slices a document's
sentences out of the maps on demand. Examples are drawn fresh each epoch from a generator seeded
by (seed, epoch, document), so a run, its resume and every rank agree. `max_documents` optionally
caps the documents read per split.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from lmpretrain.config import to_dict
from lmpretrain.data.corpus import SPLITS, TextCorpus, TextSource, fields_by_hash
from lmpretrain.data.readers import Keys
from lmpretrain.data.sentences import sentence_ends
from lmpretrain.data.streaming import ShardedStream, StreamingDataModule, take_rank
from lmpretrain.errors import ConfigError, DataError
from lmpretrain.tokenizers.build import tokenizer_fingerprint

EXAMPLES = ("nsp", "sop", "texts")
ENCODE_BATCH = 1024  # texts per tokenizer call while a split streams into its cache
CACHE_FORMAT = 1  # version of the files below; bump when they change
# name -> dtype of the flat arrays of a tokenized split (`tokens_b`/`ends_b` only with data.field_b)
ARRAYS = {"tokens": np.int32, "sent_ends": np.int64, "doc_ends": np.int64, "tokens_b": np.int32, "ends_b": np.int64}


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


def make_pair(docs, index: int, examples: str, max_tokens: int, rng: np.random.Generator):
    """(A tokens, B tokens, pair_label) from document `index` (which has >= 2 sentences)."""
    a_sents, b_sents = choose_segments(docs[index], max_tokens, rng)
    a, b = np.concatenate(a_sents), np.concatenate(b_sents)
    label = int(rng.random() < 0.5)
    if examples == "nsp" and label == 0:  # B from a random other document, from a random sentence on
        other = int(rng.integers(0, len(docs) - 1))
        other += other >= index
        first = int(rng.integers(0, len(docs[other])))
        b = np.concatenate(docs[other][first:])
    a, b = truncate_pair(a, b, max_tokens)  # before a swap, so the true A|B boundary survives
    if examples == "sop" and label == 1:
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


class PairExamples(ShardedStream):
    """The example stream of one split: documents in a seeded order per epoch (file order for
    validation), owned by rank and worker as in `data/streaming.py`."""

    def __init__(self, docs, docs_b, examples: str, ids: dict, block_size: int, shuffle: bool, seed: int, **stream):
        super().__init__(**stream)
        self.docs, self.docs_b, self.examples, self.ids = docs, docs_b, examples, ids
        self.block_size, self.shuffle, self.seed = block_size, shuffle, seed

    def example(self, position: int, item: tuple[int, int]) -> dict:
        epoch, i = item
        rng = np.random.default_rng([self.seed, epoch, i])
        cls, sep, pad = self.ids["cls"], self.ids["sep"], self.ids["pad"]
        if self.examples == "texts":
            out = encode_pair(self.docs[i][0][: self.block_size - 2], None, cls, sep, pad, self.block_size)
            if self.docs_b is not None:
                b = encode_pair(self.docs_b[i][0][: self.block_size - 2], None, cls, sep, pad, self.block_size)
                out.update({f"{k}_b": v for k, v in b.items() if k != "token_type_ids"})
            return out
        a, b, label = make_pair(self.docs, i, self.examples, self.block_size - 3, rng)
        return {**encode_pair(a, b, cls, sep, pad, self.block_size), "pair_label": torch.tensor(label)}

    def rank_stream(self) -> Iterator[tuple[int, int]]:
        """(epoch, document) of this rank, epochs chained when shuffling."""
        for epoch in itertools.count() if self.shuffle else [0]:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.docs)) if self.shuffle \
                else np.arange(len(self.docs))
            yield from ((epoch, int(i)) for i in take_rank(order, self.rank, self.world_size))


class SentencePairDataModule(StreamingDataModule):
    collate_fn = staticmethod(trim_padding)
    # SimCSE starts from an MLM encoder (Gao et al. 2021 start from BERT): `pretrained=` hands over the
    # checkpoint's tokenizer, which must then read the pairs
    takes_tokenizer = True

    def __init__(self, files: list[str], examples: str = "sop", tokenizer: dict | None = None, block_size: int = 128,
                 batch_size: int = 32, field_b: str | None = None, max_documents: int | None = None,
                 cls_token: str = "[CLS]", sep_token: str = "[SEP]", pad_token: str = "[PAD]", num_workers: int = 0,
                 seed: int = 0, **corpus):
        """`corpus`: the `TextCorpus` keys (field, split, val_fraction, data_dir, cache_dir, checksums,
        urls); here the split defaults to a per-document hash, 5% for validation."""
        super().__init__(block_size, batch_size, num_workers, seed)
        if examples not in EXAMPLES:
            raise ConfigError(f"data.examples={examples!r} must be one of {EXAMPLES}")
        if field_b is not None and examples != "texts":
            raise ConfigError(f"data.field_b is for data.examples=texts (SimCSE pairs), not {examples}; unset it")
        if block_size < 8:
            raise ConfigError(f"data.block_size={block_size} is too short for [CLS] A [SEP] B [SEP]")
        # plain values: Hydra passes ListConfigs
        self.corpus = TextCorpus.from_config(files, to_dict(tokenizer), corpus, split="hash", val_fraction=0.05)
        self.examples, self.field_b, self.max_documents = examples, field_b, max_documents
        self.special = {"cls": cls_token, "sep": sep_token, "pad": pad_token}
        self.docs: dict[str, TokenizedDocs] = {}
        self.docs_b: dict[str, TokenizedDocs | None] = {}

    def prepare_data(self) -> None:
        if self.docs:
            return
        source, fingerprint, self.tokenizer = self.corpus.open(self.tokenizer)
        paths = source.paths
        self.ids = {}
        for role, token in self.special.items():
            if (tid := self.tokenizer.token_to_id(token)) is None:
                raise ConfigError(f"data.{role}_token={token!r} is not in the tokenizer; use tokenizer=wordpiece "
                                  f"or list {token!r} in tokenizer.special_tokens")
            self.ids[role] = tid
        key = hashlib.sha256(json.dumps(
            [fingerprint, tokenizer_fingerprint(self.tokenizer), self.corpus.field, self.field_b, self.corpus.split,
             self.corpus.val_fraction, self.max_documents, self.examples == "texts", asdict(self.corpus.tokenizer)],
            sort_keys=True).encode()).hexdigest()[:16]
        for part in SPLITS:
            folder = self.corpus.cache_dir / "pairs" / key / part
            if not (folder / "meta.json").is_file():
                self._tokenize(source, paths, part, folder)
            docs = TokenizedDocs.open(folder)
            self.docs_b[part] = TokenizedDocs.open(folder, "_b") if self.field_b else None
            if self.examples != "texts":  # a pair needs two sentences
                docs = docs.with_min_sentences(2)
            self.docs[part] = docs
            if len(docs) < 2:
                raise DataError(f"the {part} split of {self.corpus.files} has {len(docs)} usable documents "
                                f"(examples={self.examples} needs >= 2{' with >= 2 sentences' if self.examples != 'texts' else ''}); "
                                f"use a bigger corpus or raise data.val_fraction")

    def _texts(self, source: TextSource, paths: list[Path], part: str) -> Iterator[tuple[str, str | None]]:
        """(text, text_b or None) of split `part`, lazily, at most `max_documents` of them."""
        if self.field_b:
            records = fields_by_hash(paths, (self.corpus.field, self.field_b), self.corpus.val_fraction, part,
                                     Keys(field="data.field(_b)"))
        else:
            records = ((text, None) for text in source.texts(part))
        return itertools.islice(records, self.max_documents)

    def _tokenize(self, source: TextSource, paths: list[Path], part: str, out: Path) -> None:
        """Stream split `part` through the tokenizer into flat arrays under folder `out`, appending
        ENCODE_BATCH texts at a time; the folder appears whole (os.replace) with meta.json in it."""
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        names = list(ARRAYS) if self.field_b else ["tokens", "sent_ends", "doc_ends"]
        n_tok = n_sent = n_tok_b = 0
        try:
            with ExitStack() as stack:
                files = {name: stack.enter_context(open(tmp / f"{name}.bin", "wb")) for name in names}
                for batch in _batches(self._texts(source, paths, part), ENCODE_BATCH):
                    texts = [t for t, _ in batch]
                    encs = self.tokenizer.encode_batch(texts, add_special_tokens=False)
                    encs_b = self.tokenizer.encode_batch([t for _, t in batch], add_special_tokens=False) \
                        if self.field_b else None
                    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
                    for i, (enc, text) in enumerate(zip(encs, texts)):
                        if not enc.ids or (encs_b is not None and not encs_b[i].ids):
                            continue  # an empty text (or half of a pair) teaches nothing
                        ids = np.asarray(enc.ids, dtype=ARRAYS["tokens"])
                        # examples=texts keeps each document whole, as one "sentence"
                        ends = np.array([len(ids)]) if self.examples == "texts" else sentence_ends(enc, text, len(ids))
                        parts["tokens"].append(ids)
                        parts["sent_ends"].append(n_tok + np.asarray(ends, ARRAYS["sent_ends"]))
                        n_tok, n_sent = n_tok + len(ids), n_sent + len(ends)
                        parts["doc_ends"].append(np.array([n_sent], ARRAYS["doc_ends"]))
                        if encs_b is not None:
                            parts["tokens_b"].append(np.asarray(encs_b[i].ids, dtype=ARRAYS["tokens_b"]))
                            n_tok_b += len(encs_b[i].ids)
                            parts["ends_b"].append(np.array([n_tok_b], ARRAYS["ends_b"]))
                    for name, arrays in parts.items():  # one append per file and batch
                        if arrays:
                            np.concatenate(arrays).astype(ARRAYS[name], copy=False).tofile(files[name])
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        counts = {name: (tmp / f"{name}.bin").stat().st_size // np.dtype(ARRAYS[name]).itemsize for name in names}
        meta = {"format": CACHE_FORMAT, "counts": counts, "dtypes": {n: np.dtype(ARRAYS[n]).name for n in names}}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))  # last: marks the folder complete
        try:
            os.replace(tmp, out)  # atomic: a concurrent rank never reads half a split
        except OSError:  # another rank finished first: its copy is the same, keep it
            if not (out / "meta.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)

    def dataset(self, part: str) -> PairExamples:
        return PairExamples(self.docs[part], self.docs_b[part], self.examples, self.ids, self.block_size,
                            shuffle=part == "train", seed=self.seed, **self.stream_args(part))


def _batches(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


def _open_array(folder: Path, name: str, meta: dict) -> np.ndarray:
    count, dtype = meta["counts"][name], np.dtype(meta["dtypes"][name])
    if count == 0:  # mmap cannot map an empty file
        return np.zeros(0, dtype)
    return np.memmap(folder / f"{name}.bin", dtype=dtype, mode="r", shape=(count,))


class TokenizedDocs:
    """Read-only view of a tokenized split: `docs[i]` is document i's sentences (int64 arrays),
    sliced from memory-mapped flat arrays on demand.

    tokens    : all token ids, documents after one another
    sent_ends : cumulative token offset where each sentence ends
    doc_ends  : cumulative sentence count where each document ends; None = one sentence a document
    index     : which documents are visible, in order (None = all); `len` counts only those
    """

    def __init__(self, tokens: np.ndarray, sent_ends: np.ndarray, doc_ends: np.ndarray | None = None,
                 index: np.ndarray | None = None, folder: Path | None = None, suffix: str = ""):
        self.tokens, self.sent_ends, self.doc_ends, self.index = tokens, sent_ends, doc_ends, index
        self.folder, self.suffix = folder, suffix

    @classmethod
    def open(cls, folder: Path, suffix: str = "") -> TokenizedDocs:
        """The documents of a cache folder written by `SentencePairDataModule._tokenize`; suffix "_b"
        gives the second texts (`tokens_b`, one sentence each)."""
        meta = json.loads((folder / "meta.json").read_text())
        if suffix:
            return cls(_open_array(folder, f"tokens{suffix}", meta), _open_array(folder, f"ends{suffix}", meta),
                       folder=folder, suffix=suffix)
        return cls(_open_array(folder, "tokens", meta), _open_array(folder, "sent_ends", meta),
                   _open_array(folder, "doc_ends", meta), folder=folder)

    @property
    def n_documents(self) -> int:
        """All documents of the split, visible or not."""
        return len(self.sent_ends) if self.doc_ends is None else len(self.doc_ends)

    def sentence_counts(self) -> np.ndarray:
        if self.doc_ends is None:
            return np.ones(self.n_documents, np.int64)
        return np.diff(np.asarray(self.doc_ends, np.int64), prepend=0)

    def with_min_sentences(self, n: int) -> TokenizedDocs:
        """A view of only the documents with >= n sentences (an int64 index: 8 bytes a document)."""
        keep = np.flatnonzero(self.sentence_counts() >= n).astype(np.int64)
        if self.index is not None:
            keep = self.index[np.isin(self.index, keep)]
        return TokenizedDocs(self.tokens, self.sent_ends, self.doc_ends, keep, self.folder, self.suffix)

    def __len__(self) -> int:
        return self.n_documents if self.index is None else len(self.index)

    def __getitem__(self, i: int) -> list[np.ndarray]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"document {i} of {n}")
        d = int(self.index[i]) if self.index is not None else int(i) % n
        if self.doc_ends is None:
            s0, s1 = d, d + 1
        else:
            s0, s1 = (int(self.doc_ends[d - 1]) if d else 0), int(self.doc_ends[d])
        starts = [int(self.sent_ends[s0 - 1]) if s0 else 0] + [int(e) for e in self.sent_ends[s0 : s1 - 1]]
        ends = [int(e) for e in self.sent_ends[s0:s1]]
        return [np.array(self.tokens[a:b], dtype=np.int64) for a, b in zip(starts, ends)]

    def __iter__(self) -> Iterator[list[np.ndarray]]:
        return (self[i] for i in range(len(self)))

    # DataLoader workers (spawned) get the file names, not a copy of the mapped data
    def __getstate__(self) -> dict:
        if self.folder is None:
            return self.__dict__
        return {"folder": self.folder, "suffix": self.suffix, "index": self.index}

    def __setstate__(self, state: dict) -> None:
        if "tokens" in state:
            self.__dict__.update(state)
            return
        view = TokenizedDocs.open(state["folder"], state["suffix"])
        self.__dict__.update(view.__dict__)
        self.index = state["index"]
