"""SentencePairDataModule streams: its splits live in memory-mapped cache files, not in Python lists."""

import pickle

import numpy as np
import torch
from test_sentence_pairs import WORDPIECE, corpus

from lmpretrain.data import sentence_pairs as pairs_module
from lmpretrain.data.sentence_pairs import SentencePairDataModule, TokenizedDocs


def first_batches(dm, n=3):
    it = iter(dm.train_dataloader())
    return [next(it) for _ in range(n)]


def test_documents_are_memory_mapped_and_batches_deterministic(tmp_path, monkeypatch):
    monkeypatch.setattr(pairs_module, "ENCODE_BATCH", 16)  # several appends per split file
    common = {"files": [str(corpus(tmp_path))], "examples": "nsp", "tokenizer": WORDPIECE, "block_size": 48,
              "batch_size": 4, "cache_dir": str(tmp_path)}
    dm = SentencePairDataModule(**common)
    dm.setup("fit")
    for part in ("train", "val"):
        view = dm.docs[part]
        assert isinstance(view, TokenizedDocs)
        assert all(isinstance(a, np.memmap) for a in (view.tokens, view.sent_ends, view.doc_ends))
        # the only per-document data in memory is the int64 index of usable (>= 2 sentence) documents
        assert view.index.dtype == np.int64 and len(view) == len(view.index) >= 2
        doc = view[0]
        assert len(doc) >= 2 and all(s.dtype == np.int64 and len(s) for s in doc)

    # the same cached files, opened by a second module (no re-tokenizing), give the same batches
    other = SentencePairDataModule(**common)
    other.setup("fit")
    assert other.docs["train"].folder == dm.docs["train"].folder
    for want, got in zip(first_batches(dm), first_batches(other)):
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)

    # a DataLoader worker receives the file location, not a copy of the corpus
    view = dm.docs["train"]
    blob = pickle.dumps(view)
    assert len(blob) < view.tokens.nbytes
    copy = pickle.loads(blob)
    assert isinstance(copy.tokens, np.memmap) and len(copy) == len(view)
    assert all(np.array_equal(s, t) for i in (0, len(view) - 1) for s, t in zip(copy[i], view[i]))


def test_text_pairs_view_and_document_cap(tmp_path):
    common = {"files": [str(corpus(tmp_path))], "tokenizer": WORDPIECE, "block_size": 48, "batch_size": 4,
              "cache_dir": str(tmp_path)}
    dm = SentencePairDataModule(examples="texts", field="title", field_b="text", **common)
    dm.setup("fit")
    a, b = dm.docs["train"], dm.docs_b["train"]
    assert isinstance(b.tokens, np.memmap) and len(a) == len(b)
    assert all(len(a[i]) == 1 and len(b[i]) == 1 for i in range(len(a)))  # one "sentence" a text
    assert dm.tokenizer.decode(a[0][0].tolist()).startswith("doc number")

    capped = SentencePairDataModule(examples="sop", max_documents=40, **common)
    capped.setup("fit")
    assert 2 <= len(capped.docs["train"]) <= capped.docs["train"].n_documents <= 40
