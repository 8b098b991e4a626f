"""NSP / SOP examples: label balance, and labels that say exactly what was done to the segments."""

import json
import math

import numpy as np
import pytest
import torch

from lmpretrain.data.sentence_pairs import SentencePairDataModule, encode_pair, make_pair
from lmpretrain.errors import ConfigError

N = 4000


def synthetic_docs(n_docs=300, seed=0):
    """Documents of 2-6 sentences of 1-12 tokens; every token id is unique, so (doc, position) of
    any token is known: id -> where it came from."""
    rng = np.random.default_rng(seed)
    docs, where, next_id = [], {}, 0
    for d in range(n_docs):
        doc, pos = [], 0
        for _ in range(rng.integers(2, 7)):
            n = int(rng.integers(1, 13))
            doc.append(np.arange(next_id, next_id + n))
            for t in range(next_id, next_id + n):
                where[t] = (d, pos)
                pos += 1
            next_id += n
        docs.append(doc)
    return docs, where


def check_balance(labels):
    ones = sum(labels)
    assert abs(ones / len(labels) - 0.5) <= 3 * math.sqrt(0.25 / len(labels)), ones / len(labels)


def contiguous(seg, where):
    """(doc, first position, last position) of a segment, asserting it is one unbroken run."""
    docs = {where[int(t)][0] for t in seg}
    positions = [where[int(t)][1] for t in seg]
    assert len(docs) == 1 and positions == list(range(positions[0], positions[0] + len(seg)))
    return docs.pop(), positions[0], positions[-1]


@pytest.mark.parametrize("max_tokens", [40, 10])
def test_sop_swaps_exactly_the_pairs_it_labels_swapped(max_tokens):
    docs, where = synthetic_docs()
    rng = np.random.default_rng(1)
    labels = []
    for k in range(N):
        a, b, label = make_pair(docs, k % len(docs), "sop", max_tokens, rng)
        assert len(a) >= 1 and len(b) >= 1 and len(a) + len(b) <= max_tokens
        da, a0, a1 = contiguous(a, where)
        db, b0, b1 = contiguous(b, where)
        assert da == db == k % len(docs)
        if label == 0:
            assert a1 + 1 == b0, "in-order pair is not A then B"
        else:
            assert b1 + 1 == a0, "swapped pair is not B then A"
        labels.append(label)
    check_balance(labels)


def test_nsp_is_balanced_and_negatives_come_from_another_document():
    docs, where = synthetic_docs()
    rng = np.random.default_rng(2)
    labels = []
    for k in range(N):
        a, b, label = make_pair(docs, k % len(docs), "nsp", 40, rng)
        da, _, a1 = contiguous(a, where)
        db, b0, _ = contiguous(b, where)
        if label == 1:
            assert da == db and a1 + 1 == b0, "a positive is not the true continuation"
        else:
            assert da != db, "a negative came from the same document"
        labels.append(label)
    check_balance(labels)


def test_encode_pair_layout():
    out = encode_pair(np.array([10, 11]), np.array([20]), cls_id=2, sep_id=3, pad_id=0, length=8)
    assert out["input_ids"].tolist() == [2, 10, 11, 3, 20, 3, 0, 0]
    assert out["token_type_ids"].tolist() == [0, 0, 0, 0, 1, 1, 0, 0]
    assert out["attention_mask"].tolist() == [1, 1, 1, 1, 1, 1, 0, 0]


WORDPIECE = {"kind": "wordpiece", "vocab_size": 300, "special_tokens": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
             "eos_token": "[SEP]", "unk_token": "[UNK]", "lowercase": True}


def corpus(tmp_path):
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "while", "dogs", "ran", "far", "away", "from", "home", "and", "birds", "sang", "loud", "songs"]
    with open(tmp_path / "docs.jsonl", "w") as f:
        for i in range(200):
            sents = [" ".join(rng.choice(words, rng.integers(3, 9))).capitalize() + "." for _ in range(3)]
            f.write(json.dumps({"text": " ".join(sents), "title": f"Doc number {i}."}) + "\n")
    return tmp_path / "docs.jsonl"


def test_datamodule_batches_for_sop_and_text_pairs(tmp_path):
    path = corpus(tmp_path)
    common = {"files": [str(path)], "tokenizer": WORDPIECE, "block_size": 48, "batch_size": 8, "cache_dir": str(tmp_path)}
    dm = SentencePairDataModule(examples="sop", **common)
    dm.prepare_data()
    batch = next(iter(dm.train_dataloader()))
    sep, cls = dm.tokenizer.token_to_id("[SEP]"), dm.tokenizer.token_to_id("[CLS]")
    assert (batch["input_ids"][:, 0] == cls).all()
    assert (batch["input_ids"] == sep).sum(1).eq(2).all()  # [CLS] A [SEP] B [SEP]
    first_sep = (batch["input_ids"] == sep).long().argmax(1)
    for row, s in enumerate(first_sep):  # segment 1 starts right after the first [SEP]
        assert batch["token_type_ids"][row, : s + 1].eq(0).all() and batch["token_type_ids"][row, s + 1] == 1
    assert batch["pair_label"].shape == (8,)
    assert batch["input_ids"].shape[1] == int(batch["attention_mask"].sum(1).max())  # padding trimmed

    # its own cache: the tokenizer cache key does not include data.field
    pairs = SentencePairDataModule(examples="texts", field="title", field_b="text", **{**common, "cache_dir": str(tmp_path / "b")})
    pairs.prepare_data()
    batch = next(iter(pairs.val_dataloader()))
    assert {"input_ids", "attention_mask", "input_ids_b", "attention_mask_b"} <= set(batch)
    assert pairs.tokenizer.decode(batch["input_ids"][0].tolist()).startswith("doc number")

    with pytest.raises(ConfigError, match="data.field_b"):
        SentencePairDataModule(examples="sop", field_b="title", **common)


def test_train_stream_resumes_exactly(tmp_path):
    """Batches after a resume at batch k are the batches k, k+1, ... of a straight run."""
    common = {"files": [str(corpus(tmp_path))], "examples": "nsp", "tokenizer": WORDPIECE, "block_size": 48, "batch_size": 4,
                  "cache_dir": str(tmp_path)}
    straight = SentencePairDataModule(**common)
    straight.prepare_data()
    it = iter(straight.train_dataloader())
    batches = [next(it) for _ in range(5)]
    resumed = SentencePairDataModule(**common)
    resumed.prepare_data()
    resumed.load_state_dict({"train_batches_seen": 3})
    it = iter(resumed.train_dataloader())
    for want in batches[3:]:
        got = next(it)
        assert all(torch.equal(got[k], want[k]) for k in want)
