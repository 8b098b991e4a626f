"""DataModules and datasets. Imported lazily: `lmpretrain.data.shard_format` (used by `prepare`) must not
pay for importing Lightning."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "PackedBlocks": "lmpretrain.data.packed_blocks",
    "PackedTextDataModule": "lmpretrain.data.packed_text",
    "ShardsDataModule": "lmpretrain.data.shards",
    "SentencePairDataModule": "lmpretrain.data.sentence_pairs",
    "LabeledDataModule": "lmpretrain.data.labeled",
    "PairSimilarityDataModule": "lmpretrain.data.similarity",
    "QADataModule": "lmpretrain.data.qa",
    "Seq2SeqDataModule": "lmpretrain.data.seq2seq",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lmpretrain.data' has no attribute {name!r}")


__all__ = list(_EXPORTS)
