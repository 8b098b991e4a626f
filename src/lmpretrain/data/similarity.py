"""`PairSimilarityDataModule`: text pairs with a similarity score (STS-style regression), streamed
and encoded on the fly like every `LabeledDataModule`.

Two encodings (`mode`):

    cross  one sequence [CLS] a [SEP] b [SEP] (segments 0 / 1), the pair cut to `block_size` (the
           longer text loses tokens first): a cross-encoder reads both texts at once
    bi     each text alone, [CLS] a [SEP] and [CLS] b [SEP], each cut to `block_size`
           (input_ids / attention_mask and input_ids_b / attention_mask_b): a bi-encoder embeds
           them separately and compares the embeddings

Every batch carries `scores` (B,) float32, the record's score mapped from `score_range` to [0, 1].

A data set that comes as one file (similarity_lee: all 1,225 pairs of 50 documents) is split **by
document**: `split_by` lists the text fields, each text goes to train / val / test by a hash of the
text itself (`corpus.split_by_hash`, the project's one hash rule), and a pair is kept in a split only
when both its texts fall in that split; a pair across splits is dropped. So no text of a val/test
pair occurs in any training pair (nor val in test). `split_by` = one field name splits by the hash
of that field as in the base class; null = the files are already split.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch

from lmpretrain.data.corpus import split_by_hash
from lmpretrain.data.labeled import SPLITS, LabeledDataModule
from lmpretrain.errors import ConfigError, DataError

log = logging.getLogger(__name__)

MODES = ("cross", "bi")


def pair_collate(pad_id: int):
    """Pad each encoded text to the longest in the batch (ids with `pad_id`, masks and segments with
    0); `scores` as float32."""

    def pad(rows: list[list[int]], fill: int) -> torch.Tensor:
        T = max(len(r) for r in rows)
        return torch.tensor([r + [fill] * (T - len(r)) for r in rows])

    def collate(examples: list[dict]) -> dict:
        out = {}
        for key, fill in (("input_ids", pad_id), ("attention_mask", 0), ("token_type_ids", 0),
                          ("input_ids_b", pad_id), ("attention_mask_b", 0)):
            if key in examples[0]:
                out[key] = pad([e[key] for e in examples], fill)
        out["scores"] = torch.tensor([e["scores"] for e in examples], dtype=torch.float32)
        return out

    return collate


class PairSimilarityDataModule(LabeledDataModule):
    """Pairs of texts with a similarity score: `files` maps train/val(/test) to a file each (the same
    file for all three with `split_by`).

    mode: cross | bi (see the module docstring).
    text_field, text_b_field, label_field: the two texts and the score (a number) of each jsonl record.
    score_range: [low, high] of the scores in the files; a score is mapped to (s - low) / (high - low),
        so every loss and prediction lives in [0, 1] (Pearson and Spearman do not change). A score
        outside the range is an error naming its file and line.
    split_by: a list of fields (the texts): split by document, pairs across splits dropped; one field
        name: by that field's hash (as `LabeledDataModule`); null: the files are already split.
    val_fraction, test_fraction: the shares of the hash range (of *documents* with a list split_by).
    block_size: tokens per encoded sequence (the pair in `cross`, each text in `bi`); longer texts
        are cut (news articles are often longer than a tiny model's 128 positions).
    """

    families = ("similarity",)

    def __init__(self, files: dict[str, str], family: str = "similarity", mode: str = "cross",
                 text_field: str = "text_a", text_b_field: str | None = "text_b", label_field: str = "score",
                 score_range: Sequence[float] = (0.0, 1.0), labels: list[str] | None = None,
                 split_by: str | Sequence[str] | None = None, augment: dict | None = None, **kwargs):
        if mode not in MODES:
            raise ConfigError(f"data.mode={mode!r} must be one of {MODES}")
        if not text_field or not text_b_field:
            raise ConfigError("a similarity data set needs two texts: set data.text_field and data.text_b_field")
        if labels:
            raise ConfigError("data.labels lists class names; similarity scores are numbers: set data.labels=null")
        if augment:
            raise ConfigError("data.augment rewrites texts, which changes how similar they are; use it with "
                              "classification tasks only")
        low, high = (float(x) for x in score_range)
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ConfigError(f"data.score_range={list(score_range)} must be [low, high] with low < high")
        if split_by is not None and not isinstance(split_by, str):
            split_by = [str(f) for f in split_by]
            if not split_by:
                raise ConfigError("data.split_by=[] lists no field; give the text fields, one field, or null")
        super().__init__(family, files, text_field=text_field, text_b_field=text_b_field, label_field=label_field,
                         split_by=split_by, **kwargs)
        self.mode, self.score_range = mode, (low, high)
        self.counts: dict[str, int] = {}

    # -- the document split ----------------------------------------------------------------------
    def split_of(self, record: dict) -> str | None:
        """The split of a record of a one-file data set; None = its texts fall in different splits
        (the pair is dropped)."""
        if isinstance(self.split_by, str):
            return super().split_of(record)
        parts = set()
        for field in self.split_by:
            if field not in record:
                raise DataError(f"a record has no field {field!r} (has {sorted(record)}); set data.split_by")
            parts.add(split_by_hash(str(record[field]), self.val_fraction, self.test_fraction, self.fold))
        return parts.pop() if len(parts) == 1 else None

    # -- records ---------------------------------------------------------------------------------
    def label_values(self, record: dict) -> None:
        return None  # regression: no label names

    def score(self, record: dict) -> float:
        """The record's score mapped to [0, 1]."""
        if not isinstance(record, dict) or self.label_field not in record:
            raise DataError(f"no field {self.label_field!r}; set data.label_field to the score field")
        value = record[self.label_field]
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise DataError(f"score {value!r} is not a number")
        try:
            s = float(value)
        except ValueError:
            raise DataError(f"score {value!r} is not a number") from None
        low, high = self.score_range
        if not low <= s <= high:
            raise DataError(f"score {s} is outside data.score_range=[{low}, {high}]; set data.score_range")
        return (s - low) / (high - low)

    def prepare_data(self) -> None:
        first = not self.paths
        super().prepare_data()
        if first:
            self._check_records()

    def _check_records(self) -> None:
        """Every record of every split has both texts and a score in range (file:line otherwise); count
        the pairs each split keeps. Read once before training, as the base class checks labels."""
        for part in sorted(self.paths, key=SPLITS.index):
            n = 0
            for lineno, record in self.records(part):
                try:
                    for f in (self.text_field, self.text_b_field):
                        if not isinstance(record.get(f), str):
                            raise DataError(f"no text field {f!r}; set data.text_field / data.text_b_field")
                    self.score(record)
                except DataError as e:
                    raise DataError(f"{self.paths[part]}:{lineno}: {e}") from None
                n += 1
            if n == 0:
                fix = " (raise data.val_fraction / data.test_fraction)" if self.split_by is not None else ""
                raise DataError(f"{self.paths[part]} has no pairs for the {part} split{fix}")
            self.counts[part] = n
        log.info("pairs per split: %s", self.counts)

    def _special(self) -> None:
        tok = self.tokenizer
        self.cls_id, self.sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        self.pad_id = next((tok.token_to_id(t) for t in ("[PAD]", "<pad>", "<|endoftext|>")
                            if tok.token_to_id(t) is not None), 0)
        self.collate_fn = pair_collate(self.pad_id)

    # -- encoding --------------------------------------------------------------------------------
    def encode(self, record: dict) -> dict:
        ids_a = self.tokenizer.encode(record[self.text_field], add_special_tokens=False).ids
        ids_b = self.tokenizer.encode(record[self.text_b_field], add_special_tokens=False).ids
        score = self.score(record)
        if self.mode == "cross":
            input_ids, segments = self._wrap(ids_a, ids_b)
            return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "token_type_ids": segments,
                    "scores": score}
        a, _ = self._wrap(ids_a)
        b, _ = self._wrap(ids_b)
        return {"input_ids": a, "attention_mask": [1] * len(a), "input_ids_b": b, "attention_mask_b": [1] * len(b),
                "scores": score}
