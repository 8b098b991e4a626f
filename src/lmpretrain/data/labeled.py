"""`LabeledDataModule`: the downstream data sets (one file per split), streamed and encoded on the fly.

Records are read line by line (jsonl / jsonl.gz, or CoNLL `token<TAB>tag` with a blank line after
each sentence) and tokenized as they are drawn, so a data set is never held in memory. Two task families:

    classification       text (+ text_b) -> [CLS] a [SEP] (b [SEP]); one label per example
    token_classification words -> sub-word ids; each word's label on its first sub-word, -100 on
                         the rest and on special tokens (the usual BERT NER alignment)

Order and sharding follow `PackedBlocks`: training visits the split in a new seeded permutation each
epoch (one seed for all ranks; `RecordIndex` keeps 16 bytes per record and reads records at their
offsets, so the split is still not held in memory) and chains epochs; rank r of R takes records
r, r + R, ... of that order (validation and test: of the file); ownership by worker and resume by
batch come from the streaming core (`data/streaming.py`), so a resumed run sees exactly the batches
an uninterrupted one would have.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import itertools
import random
import shutil
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from lmpretrain.atomic import atomic_write
from lmpretrain.config import to_dict
from lmpretrain.data.corpus import resolve_files, split_by_hash
from lmpretrain.data.readers import line_offsets, open_binary, read_numbered_records, read_records_at
from lmpretrain.data.streaming import ShardedStream, StreamingDataModule, take_rank
from lmpretrain.errors import ConfigError, DataError
from lmpretrain.paths import cache_root, data_root

SPLITS = ("train", "val", "test")


def plain_copy(path: Path, cache_dir: Path) -> Path:
    """`path` itself, or for a .gz file its decompressed copy in the cache (written once per file
    version, keyed by the resolved path, size and mtime; `atomic_write`, so ranks and workers writing
    at once are safe), which training reads at random offsets."""
    if path.suffix != ".gz":
        return path
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    out = cache_dir / "plain" / f"{path.name.removesuffix('.gz')}.{key}"

    def decompress(tmp: Path) -> None:
        try:
            with open_binary(path) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except (EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise DataError(f"{path}: cannot be read ({e}); check that it is a complete .gz file") from e

    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, decompress)
    return out


class RecordIndex:
    """Where each record of one split begins in its (decompressed) file: 16 bytes per record, so a
    training epoch can visit the whole split in a seeded random order while holding one record at a
    time. A buffer shuffle cannot do that for a sorted file: spam.train lists all ham before all
    spam, and debian_packages.train is sorted by package name, so a 4,096-record buffer fed 0.6%
    `python` packages (7.5% of the split) and no `rust` ones to the first 16,000 examples."""

    def __init__(self, plain: Path, numbered: Iterator[tuple[int, dict]]):
        # numbered: the split's (line number, record) in file order, read (and checked) from the
        # split's own file; `plain` holds the same bytes uncompressed.
        self.plain = plain
        lines = np.fromiter((n for n, _ in numbered), dtype=np.int64)
        starts = line_offsets(plain)[lines - 1] if len(lines) else lines
        self.spots = np.stack([starts, lines], axis=1)  # (byte offset, line number) per record

    def __len__(self) -> int:
        return len(self.spots)

    def permuted(self, seed: str, rank: int = 0, world_size: int = 1) -> Iterator[dict]:
        """Records rank, rank + world_size, ... of the permutation seeded by `seed` (only those are
        read: every rank draws the same permutation and reads its own share)."""
        rng = np.random.default_rng(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "little"))
        order = rng.permutation(len(self.spots))[rank::world_size]
        for _, record in read_records_at(self.plain, self.spots[order]):
            yield record


class LabeledExamples(ShardedStream):
    """The encoded examples of one split for one rank: records in file order (validation, test) or
    in a seeded permutation per epoch, epochs chained (training); owned by rank and worker
    as in `data/streaming.py`."""

    def __init__(self, records, name: str, encode, train: bool, seed: int, permuted=None, augment=None, **stream):
        super().__init__(**stream)
        # records() -> the split's records in file order; permuted(key, rank, world_size) -> a rank's
        # share of them in an order seeded by `key` (training; None = file order every epoch);
        # name: the split's file
        self.records, self.permuted, self.name, self.encode, self.train = records, permuted, name, encode, train
        # augment(record, key) -> record, training only; key names this draw of the example, so the
        # same position of the stream gets the same augmented text in a resumed run.
        self.augment = augment if train else None
        self.seed = seed

    def _records(self, epoch: int) -> Iterator[dict]:
        """This rank's records of one epoch. Training permutes the whole split with one seed per
        epoch before ranks take their shares, as `PackedBlocks` does: N processes see the batches one
        process would."""
        if self.train and self.permuted:
            return self.permuted(f"{self.seed}:{epoch}", self.rank, self.world_size)
        return take_rank(self.records(), self.rank, self.world_size)

    def rank_stream(self) -> Iterator[dict]:
        if not self.train:
            yield from self._records(0)
            return
        for epoch in itertools.count():
            n = 0
            for record in self._records(epoch):
                n += 1
                yield record
            if n == 0:
                raise DataError(f"{self.name} has no records for rank {self.rank} of {self.world_size}")

    def example(self, position: int, record: dict) -> dict:
        if self.augment is not None:
            record = self.augment(record, f"{self.seed}:{self.rank}:{position}")
        return self.encode(record)


TRUNCATIONS = ("head", "tail", "head_tail")


def truncate(ids: list[int], keep: int, how: str = "head") -> list[int]:
    """`keep` of `ids`: the first ones (`head`), the last ones (`tail`), or the first quarter and
    the rest from the end (`head_tail`)."""
    if len(ids) <= keep:
        return ids
    if how == "tail":
        return ids[len(ids) - keep:]
    head = keep // 4 if how == "head_tail" else keep
    return ids[:head] + ids[len(ids) - (keep - head):]


def pad_collate(pad_id: int):
    """Stack examples padded to the longest in the batch: ids with `pad_id`, labels with -100."""

    def collate(examples: list[dict]) -> dict:
        T = max(len(e["input_ids"]) for e in examples)
        out = {}
        for key, fill in (("input_ids", pad_id), ("token_type_ids", 0), ("attention_mask", 0)):
            if key in examples[0]:
                out[key] = torch.tensor([e[key] + [fill] * (T - len(e[key])) for e in examples])
        if isinstance(examples[0]["labels"], list):  # one label per token
            out["labels"] = torch.tensor([e["labels"] + [-100] * (T - len(e["labels"])) for e in examples])
        else:
            out["labels"] = torch.tensor([e["labels"] for e in examples])
        return out

    return collate


class LabeledDataModule(StreamingDataModule):
    """Downstream data: `files` maps train/val(/test) to a file each (relative to the data root).

    family: classification | token_classification.
    text_field, text_b_field, label_field: jsonl fields (classification); CoNLL files give
        `tokens` / `tags`.
    labels: the label names in index order; null = every label of the training split, sorted
        (one streaming pass).
    block_size: tokens per example, longer ones cut; null = the model's block_size.
    truncation: which tokens a text longer than `block_size` keeps (classification): `head` (the
        first ones), `tail` (the last ones) or `head_tail` (the first quarter of the budget and the
        rest from the end; Sun et al. 2019, "How to Fine-Tune BERT for Text Classification?"). A
        Debian description or an e-mail often says what it is in its last sentence ("This package
        contains the Python 3 module"): TF-IDF + LinearSVC on debian_section scores 0.800 on whole
        descriptions, 0.764 on their first 80 words and 0.801 on 20 first + 60 last (README).
    shuffle: training in a new seeded permutation of the whole split each epoch (`RecordIndex`; a .gz
        split is decompressed once into `cache_dir`); false = file order every epoch.
    augment: EDA options (`data.augment.AugmentConfig`: deletion, swap, insertion, synonyms) applied
        to the training texts as they are drawn, a different variant each epoch; null = off.
    split_by: for a data set that comes as one file (`files` naming the same file for several
        splits): the field whose hash assigns each record to train, val (`val_fraction` of the hash
        range) or test (the next `test_fraction`), so equal keys (e.g. the same prompt) share a split.
    fold: k-fold evaluation of a one-file data set: fold k rotates the hash range by k *
        `test_fraction`, so folds 0 .. 1/test_fraction - 1 put every record in test exactly once (and
        in val once); the mean over folds tests on the whole set, where one split's few records would
        leave the score to chance (similarity_lee: 45 test pairs per fold).
    The tokenizer comes from the pretrained checkpoint (`connect(tokenizer=...)`), or is trained on the
    training split (`tokenizer` config) when fine-tuning from scratch.

    Other task families subclass this and override the per-record hooks: `record_texts` (tokenizer
    training), `label_values` (label discovery and checks; None = no labels), `encode` (one record ->
    one example, or a list of examples that the collate function flattens), `split_of`, `collate_fn`
    and `module_arguments`.
    """

    takes_tokenizer = True
    families: tuple[str, ...] = ("classification", "token_classification")

    def __init__(
        self,
        family: str,
        files: dict[str, str],
        text_field: str = "text",
        text_b_field: str | None = None,
        label_field: str = "label",
        labels: list[str] | None = None,
        block_size: int | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        shuffle: bool = True,
        truncation: str = "head",
        seed: int = 0,
        tokenizer: dict | None = None,
        data_dir: str | None = None,
        cache_dir: str | None = None,
        augment: dict | None = None,
        split_by: str | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        fold: int = 0,
    ):
        super().__init__(block_size, batch_size, num_workers, seed)
        if family not in self.families:
            raise ConfigError(f"data.family={family!r} must be one of {self.families}")
        if augment and family != "classification":
            raise ConfigError("data.augment rewrites words, which would break per-word labels; use it with "
                              "data.family=classification only")
        missing = [s for s in ("train", "val") if s not in (files or {})]
        unknown = sorted(set(files or {}) - set(SPLITS))
        if missing or unknown:
            raise ConfigError(f"data.files needs train and val entries (and optionally test); missing {missing}, "
                              f"unknown {unknown}")
        if batch_size < 1 or (block_size is not None and block_size < 4):
            raise ConfigError("data.batch_size must be >= 1 and data.block_size >= 4")
        if truncation not in TRUNCATIONS:
            raise ConfigError(f"data.truncation={truncation!r} must be one of {TRUNCATIONS}")
        if truncation != "head" and family not in ("classification", "similarity"):
            raise ConfigError(f"data.truncation={truncation} applies to classification and similarity only; "
                              f"{family} cuts its own way (per-word tags, QA windows, target length): drop it")
        self.truncation = truncation
        self.family, self.files = family, dict(to_dict(files))
        if split_by is not None and not (0 < val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
            raise ConfigError("data.val_fraction > 0, data.test_fraction >= 0 and their sum < 1 are needed with split_by")
        if fold and (split_by is None or not test_fraction or not 0 < fold * test_fraction < 1):
            raise ConfigError(f"data.fold={fold}: folds rotate the split of a one-file data set; they need "
                              "data.split_by, data.test_fraction > 0 and 0 <= fold < 1 / data.test_fraction")
        self.split_by, self.val_fraction, self.test_fraction = split_by, val_fraction, test_fraction
        self.fold = fold  # rotates the hash range (see split_by_hash)
        self.text_field, self.text_b_field, self.label_field = text_field, text_b_field, label_field
        self.labels = [str(x) for x in labels] if labels else None
        self.shuffle = bool(shuffle)
        self._indexes: dict[str, RecordIndex] = {}  # built on first use, in the process that reads
        self.tokenizer_cfg = to_dict(tokenizer) if tokenizer is not None else None  # plain values: hashed, pickled
        self.data_dir = Path(data_dir) if data_dir else data_root()
        self.cache_dir = Path(cache_dir) if cache_dir else cache_root()
        self.tokenizer = None
        self.paths: dict[str, Path] = {}
        self.augmenter = None
        if augment:
            from lmpretrain.data.augment import AugmentConfig, TextAugmenter

            self.augmenter = TextAugmenter(AugmentConfig(**to_dict(augment)))

    def has_split(self, part: str) -> bool:
        return part in self.files

    def module_arguments(self) -> dict:
        return {} if self.labels is None else {"labels": self.labels}

    def split_of(self, record: dict) -> str:
        """Which split a record of a one-file data set belongs to (`split_by`)."""
        if self.split_by not in record:
            raise DataError(f"a record has no field {self.split_by!r} (has {sorted(record)}); set data.split_by")
        return split_by_hash(str(record[self.split_by]), self.val_fraction, self.test_fraction, self.fold)

    def split_records(self, part: str) -> Iterator[dict]:
        return (record for _, record in self.records(part))

    def permuted_records(self, part: str, key: str, rank: int = 0, world_size: int = 1) -> Iterator[dict]:
        """A rank's share of the records of split `part` in a random order seeded by `key` (see
        `RecordIndex`)."""
        if part not in self._indexes:
            path = self.paths[part]
            self._indexes[part] = RecordIndex(plain_copy(path, self.cache_dir), self.records(part))
        return self._indexes[part].permuted(key, rank, world_size)

    def records(self, part: str) -> Iterator[tuple[int, dict]]:
        """(line number, record) of split `part`, in file order."""
        numbered = read_numbered_records(self.paths[part])
        if self.split_by is None:
            return numbered
        return ((n, r) for n, r in numbered if self.split_of(r) == part)

    def augment(self, record: dict, key: str) -> dict:
        """The record with its text field(s) rewritten by the augmenter, seeded by `key`."""
        out = dict(record)
        for i, f in enumerate(f for f in (self.text_field, self.text_b_field) if f):
            out[f] = self.augmenter(record[f], random.Random(f"{key}:{i}"))
        return out

    # -- setup -----------------------------------------------------------------------------------
    def text_settings(self) -> tuple:
        """What decides the training text a from-scratch tokenizer is trained on (its cache key,
        with the file): the family, the text fields and, for one file, the split."""
        split = (self.split_by, self.val_fraction, self.test_fraction) if self.split_by else None
        if split and self.fold:  # another fold trains on other records (the old key stays for fold 0)
            split = (*split, self.fold)
        return type(self).__name__, self.family, self.text_field, self.text_b_field, split

    def record_texts(self, record: dict) -> list[str]:
        """The texts of a record that the tokenizer reads (and, from scratch, is trained on)."""
        if self.family == "token_classification":
            return [" ".join(record["tokens"])]
        return [record[f] for f in (self.text_field, self.text_b_field) if f]

    def label_values(self, record: dict) -> list[str] | None:
        """The label names a record holds (one per word for token classification); None = this
        family has no label names (regression, QA, generation)."""
        key = "tags" if self.family == "token_classification" else self.label_field
        if not isinstance(record, dict) or key not in record:
            raise DataError(f"no field {key!r}; set data.label_field")
        return [str(v) for v in record[key]] if self.family == "token_classification" else [str(record[key])]

    def texts(self, part: str = "train") -> Iterator[str]:
        for _, record in self.records(part):
            yield from self.record_texts(record)

    def prepare_data(self) -> None:
        if self.paths:
            return
        for part, spec in self.files.items():
            (path,) = resolve_files([spec], self.data_dir)
            self.paths[part] = path
        if self.tokenizer is None:
            from lmpretrain.tokenizers.build import TokenizerConfig, load_or_train_tokenizer
            from lmpretrain.data.corpus import corpus_fingerprint

            if self.tokenizer_cfg is None:
                raise ConfigError("no tokenizer: pass pretrained=<checkpoint> or a tokenizer config")
            cfg = TokenizerConfig(**self.tokenizer_cfg)
            fingerprint = corpus_fingerprint([self.paths["train"]], *self.text_settings())
            self.tokenizer, _ = load_or_train_tokenizer(cfg, lambda: self.texts("train"), fingerprint,
                                                        self.cache_dir / "tokenizers")
        self.labels = self._scan_labels()
        self._special()

    def _scan_labels(self) -> list[str] | None:
        """The label names (listed in data.labels, else every label of the training split, sorted),
        after checking that every record of every split has a known label: a label that training
        never saw is reported now, naming its file and line, not after training."""
        known = set(self.labels or [])
        for part in sorted(self.paths, key=SPLITS.index):  # train first: it defines the labels
            path = self.paths[part]
            for lineno, record in self.records(part):
                try:
                    values = self.label_values(record)
                except DataError as e:
                    raise DataError(f"{path}:{lineno}: {e}") from None
                if values is None:
                    return None
                if part == "train" and self.labels is None:
                    known.update(values)
                elif unknown := sorted(set(values) - known):
                    where = "data.labels" if self.labels is not None else f"the training split ({self.paths['train']})"
                    raise DataError(f"{path}:{lineno}: label(s) {unknown} not in {where}; list every label in "
                                    f"data.labels or fix the record")
            if part == "train" and not known:
                raise DataError(f"{path} has no labelled records")
        return list(self.labels) if self.labels is not None else sorted(known)

    def _special(self) -> None:
        tok = self.tokenizer
        self.cls_id, self.sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        pad = next((tok.token_to_id(t) for t in ("[PAD]", "<pad>", "<|endoftext|>") if tok.token_to_id(t) is not None), 0)
        self.pad_id = pad
        self.collate_fn = pad_collate(pad)
        self.label_index = {name: i for i, name in enumerate(self.labels or [])}  # none: a label-free family

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    # -- encoding --------------------------------------------------------------------------------
    def _label(self, value) -> int:
        name = str(value)
        if name not in self.label_index:
            raise DataError(f"label {name!r} is not one of the {len(self.labels)} training labels {self.labels[:8]}...; "
                            f"list it in data.labels")
        return self.label_index[name]

    def _wrap(self, ids: list[int], ids_b: list[int] | None = None) -> tuple[list[int], list[int]]:
        """[CLS] a [SEP] (b [SEP]) when the tokenizer has those tokens (BERT), else a (b) as is;
        cut so the whole fits `block_size` (the longer segment loses tokens first, which ones: the
        `truncation` setting)."""
        specials = (self.cls_id is not None) + (self.sep_id is not None) * (2 if ids_b is not None else 1)
        budget = self.block_size - specials
        keep_a, keep_b = len(ids), len(ids_b) if ids_b is not None else 0
        while keep_a + keep_b > budget:
            if ids_b is not None and keep_b > keep_a:
                keep_b -= 1
            else:
                keep_a -= 1
        ids = truncate(ids, keep_a, self.truncation)  # slices: the caller's lists stay as they are
        ids_b = truncate(ids_b, keep_b, self.truncation) if ids_b is not None else None
        out = ([self.cls_id] if self.cls_id is not None else []) + ids + ([self.sep_id] if self.sep_id is not None else [])
        segments = [0] * len(out)
        if ids_b is not None:
            tail = ids_b + ([self.sep_id] if self.sep_id is not None else [])
            out += tail
            segments += [1] * len(tail)
        return out, segments

    def encode(self, record: dict) -> dict:
        if self.family == "token_classification":
            return self._encode_tokens(record)
        for f in (self.text_field, self.label_field, self.text_b_field):
            if f and f not in record:
                raise DataError(f"a record of {self.files} has no field {f!r}; set data.text_field / data.label_field")
        ids = self.tokenizer.encode(record[self.text_field], add_special_tokens=False).ids
        ids_b = self.tokenizer.encode(record[self.text_b_field], add_special_tokens=False).ids if self.text_b_field else None
        input_ids, segments = self._wrap(ids, ids_b)
        out = {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": self._label(record[self.label_field])}
        if ids_b is not None:
            out["token_type_ids"] = segments
        return out

    def _encode_tokens(self, record: dict) -> dict:
        enc = self.tokenizer.encode(record["tokens"], is_pretokenized=True, add_special_tokens=False)
        ids, labels, previous = [], [], None
        for tid, word in zip(enc.ids, enc.word_ids):
            ids.append(tid)
            labels.append(self._label(record["tags"][word]) if word is not None and word != previous else -100)
            previous = word
        input_ids, _ = self._wrap(ids)
        lead, tail = int(self.cls_id is not None), int(self.sep_id is not None)
        kept = len(input_ids) - lead - tail  # sub-words left after truncation
        labels = [-100] * lead + labels[:kept] + [-100] * tail
        return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}

    # -- loaders ---------------------------------------------------------------------------------
    def dataset(self, part: str) -> LabeledExamples:
        if self.block_size is None:
            raise ConfigError("data.block_size is null and no model set it; give data.block_size=<tokens>")
        permuted = functools.partial(self.permuted_records, part) if self.shuffle else None
        return LabeledExamples(functools.partial(self.split_records, part), str(self.paths[part]), self.encode,
                               part == "train", self.seed, permuted,
                               augment=self.augment if self.augmenter is not None else None, **self.stream_args(part))
