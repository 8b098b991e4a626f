"""LabeledDataModule: CoNLL/jsonl records, label alignment, rank x worker coverage, exact resume."""

import gzip
import itertools

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from conftest import DATA
from lmpretrain.data.labeled import LabeledDataModule, RecordIndex, plain_copy
from lmpretrain.data.readers import read_numbered_records, read_records
from lmpretrain.errors import ConfigError, DataError

WORDPIECE = {"kind": "wordpiece", "vocab_size": 2000, "special_tokens": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
             "eos_token": "[SEP]", "unk_token": "[UNK]", "lowercase": True}
NER = {"train": "ner_wnut.train.conll", "val": "ner_wnut.validation.conll", "test": "ner_wnut.test.conll"}
SPAM = {"train": "spam.train.jsonl.gz", "val": "spam.validation.jsonl.gz"}


def ner_module(**kw) -> LabeledDataModule:
    dm = LabeledDataModule("token_classification", NER, tokenizer=WORDPIECE, block_size=128, **kw)
    dm.prepare_data()
    return dm


def test_conll_sentences_and_tag_set():
    sentences = list(read_records(DATA / "ner_wnut.train.conll"))
    assert len(sentences) == 1925  # the data kit's README
    assert all(len(s["tokens"]) == len(s["tags"]) > 0 for s in sentences)
    dm = ner_module()
    assert dm.labels[0] == "B-company" and "O" in dm.labels and len(dm.labels) == 21  # B/I x 10 types + O


def test_each_word_labels_its_first_subword_only():
    dm = ner_module()
    record = {"tokens": ["Justin", "Bieberification", "in", "Montreal"], "tags": ["B-person", "I-person", "O", "B-geo-loc"]}
    ex = dm.encode(record)
    tok = dm.tokenizer
    pieces = [tok.id_to_token(i) for i in ex["input_ids"]]
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]"
    firsts = [i for i, p in enumerate(pieces[1:-1], start=1) if not p.startswith("##")]
    assert [dm.labels[ex["labels"][i]] for i in firsts] == record["tags"]
    assert all(ex["labels"][i] == -100 for i in range(len(pieces)) if i not in firsts)
    assert len(pieces) > len(record["tokens"]) + 2  # the rare word really split into sub-words
    # Truncated: labels stay aligned with the sub-words that remain, [SEP] still closes the input.
    dm.block_size = 4
    short = dm.encode(record)
    assert len(short["input_ids"]) == len(short["labels"]) == 4
    assert short["labels"][:2] == [-100, ex["labels"][1]] and short["labels"][-1] == -100


def word_tokenizer(words: list[str]) -> Tokenizer:
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    return tok


def test_classification_pairs_truncate_the_longer_segment(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"a": "one two three four five six seven", "b": "eight", "y": "yes"}\n'
                    '{"a": "nine", "b": "ten", "y": "no"}\n')
    dm = LabeledDataModule("classification", {"train": str(path), "val": str(path)}, text_field="a",
                           text_b_field="b", label_field="y", block_size=7)
    dm.connect(tokenizer=word_tokenizer(["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]))
    dm.prepare_data()
    assert dm.labels == ["no", "yes"]  # sorted from the training split
    ex = dm.encode({"a": "one two three four five six seven", "b": "eight", "y": "yes"})
    assert [dm.tokenizer.id_to_token(i) for i in ex["input_ids"]] == \
        ["[CLS]", "one", "two", "three", "[SEP]", "eight", "[SEP]"]
    assert ex["token_type_ids"] == [0, 0, 0, 0, 0, 1, 1] and ex["labels"] == 1
    with pytest.raises(DataError, match="label 'maybe' is not one of the 2 training labels"):
        dm.encode({"a": "x", "b": "y", "y": "maybe"})


def test_truncation_keeps_the_head_the_tail_or_both():
    words = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    tok = word_tokenizer(words)
    record = {"a": " ".join(words), "b": "ten", "y": "yes"}
    kept = {}
    for how in ("head", "tail", "head_tail"):
        dm = LabeledDataModule("classification", {"train": "x", "val": "x"}, text_field="a", label_field="y",
                               labels=["no", "yes"], block_size=10, truncation=how)  # 8 words + [CLS] [SEP]
        dm.connect(tokenizer=tok)
        dm._special()
        kept[how] = [tok.id_to_token(i) for i in dm.encode(record)["input_ids"]]
        assert kept[how][0] == "[CLS]" and kept[how][-1] == "[SEP]" and len(kept[how]) == 10
    assert kept["head"][1:-1] == words[:8]
    assert kept["tail"][1:-1] == words[2:]
    assert kept["head_tail"][1:-1] == words[:2] + words[4:]  # a quarter of 8 from the start, 6 from the end
    # A pair: the longer segment still gives up tokens first, from its middle with head_tail.
    dm = LabeledDataModule("classification", {"train": "x", "val": "x"}, text_field="a", text_b_field="b",
                           label_field="y", labels=["no", "yes"], block_size=9, truncation="head_tail")
    dm.connect(tokenizer=tok)
    dm._special()
    pair = [tok.id_to_token(i) for i in dm.encode(record)["input_ids"]]
    assert pair == ["[CLS]", "one", "seven", "eight", "nine", "ten", "[SEP]", "ten", "[SEP]"]
    # Short texts are never cut.
    assert [tok.id_to_token(i) for i in dm.encode({"a": "one two", "b": "ten", "y": "no"})["input_ids"]] == \
        ["[CLS]", "one", "two", "[SEP]", "ten", "[SEP]"]
    with pytest.raises(ConfigError, match="data.truncation='middle' must be one of"):
        LabeledDataModule("classification", {"train": "x", "val": "x"}, truncation="middle")
    with pytest.raises(ConfigError, match="applies to classification and similarity only"):
        LabeledDataModule("token_classification", {"train": "x", "val": "x"}, truncation="tail")


def batches(dm, part, n=None, rank=0, world=1, workers=0, start=0):
    ds = dm.dataset(part)
    ds.rank, ds.world_size, ds.start_batch = rank, world, start
    loader = torch.utils.data.DataLoader(ds, batch_size=dm.batch_size, num_workers=workers,
                                         collate_fn=dm._loader(part).collate_fn)
    return list(itertools.islice(loader, n))


def test_validation_is_covered_once_by_ranks_and_workers():
    dm = LabeledDataModule("classification", SPAM, tokenizer=WORDPIECE, labels=["ham", "spam"], batch_size=16,
                           block_size=64)
    dm.prepare_data()
    single = torch.cat([b["labels"] for b in batches(dm, "val")])
    assert len(single) == 590
    sharded = [batches(dm, "val", rank=r, world=2, workers=2) for r in (0, 1)]
    assert sum(len(b["labels"]) for rank in sharded for b in rank) == 590
    assert sorted(torch.cat([b["labels"] for rank in sharded for b in rank]).tolist()) == sorted(single.tolist())


def test_training_stream_resumes_exactly_and_reshuffles_per_epoch():
    dm = LabeledDataModule("classification", SPAM, tokenizer=WORDPIECE, labels=["ham", "spam"], batch_size=64,
                           block_size=64)
    dm.prepare_data()
    straight = batches(dm, "train", n=80, workers=2)  # 80 x 64 > 4,738: crosses into epoch 2
    resumed = batches(dm, "train", n=30, workers=2, start=50)
    for a, b in zip(straight[50:], resumed):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    rows = [tuple(t) for b in straight for t in b["input_ids"].tolist()]  # padded rows of one length
    in_file_order = [tuple(dm.encode(r)["input_ids"]) for r in itertools.islice(read_records(dm.paths["train"]), 64)]
    assert [r[: len(f)] for r, f in zip(rows[:64], in_file_order)] != in_file_order  # shuffled...
    assert rows[4738 : 4738 + 64] != rows[:64]  # ...differently in the second epoch
    epoch1 = torch.cat([b["labels"] for b in straight])[:4738]
    assert int(epoch1.sum()) == sum(r["label"] == "spam" for r in read_records(DATA / "spam.train.jsonl.gz"))


def test_bad_setups_say_what_to_fix(tmp_path):
    with pytest.raises(ConfigError, match="data.files needs train and val"):
        LabeledDataModule("classification", {"train": "spam.train.jsonl.gz"})
    with pytest.raises(ConfigError, match="data.family=.qa. must be one of"):
        LabeledDataModule("qa", SPAM)
    bad = tmp_path / "bad.conll"
    bad.write_text("word B-x extra\n")
    dm = LabeledDataModule("token_classification", {"train": str(bad), "val": str(bad)}, tokenizer=WORDPIECE)
    with pytest.raises(DataError, match="a CoNLL line must be token<TAB>tag"):
        dm.prepare_data()
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    dm = LabeledDataModule("classification", {"train": str(binary), "val": str(binary)}, tokenizer=WORDPIECE)
    with pytest.raises(DataError, match="not UTF-8 text"):
        dm.prepare_data()


def test_augmentation_rewrites_training_texts_reproducibly_and_leaves_validation_alone():
    plain = LabeledDataModule("classification", SPAM, tokenizer=WORDPIECE, labels=["ham", "spam"], batch_size=8,
                              block_size=64)
    aug = LabeledDataModule("classification", SPAM, tokenizer=WORDPIECE, labels=["ham", "spam"], batch_size=8,
                            block_size=64, augment={"p_delete": 0.3, "swap_fraction": 0.2})
    for dm in (plain, aug):
        dm.prepare_data()
    a, b = batches(plain, "train", n=4), batches(aug, "train", n=4)
    again = batches(aug, "train", n=4)
    assert all(torch.equal(x["labels"], y["labels"]) for x, y in zip(a, b))  # same examples, same order
    assert not torch.equal(a[0]["input_ids"][:, :32], b[0]["input_ids"][:, :32])  # different words
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(b, again))  # seeded
    resumed = batches(aug, "train", n=2, start=2)
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(b[2:], resumed))
    assert torch.equal(batches(plain, "val", n=1)[0]["input_ids"], batches(aug, "val", n=1)[0]["input_ids"])
    with pytest.raises(ConfigError, match="data.augment rewrites words"):
        LabeledDataModule("token_classification", NER, augment={"p_delete": 0.1})


def test_label_unseen_in_training_is_reported_before_training_with_file_and_line(tmp_path):
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    train.write_text('{"text": "a b", "label": "x"}\n{"text": "c d", "label": "y"}\n')
    val.write_text('{"text": "a", "label": "x"}\n\n{"text": "b", "label": "z"}\n')
    dm = LabeledDataModule("classification", {"train": str(train), "val": str(val)}, tokenizer=WORDPIECE,
                           cache_dir=str(tmp_path / "c"))
    with pytest.raises(DataError, match=rf"{val}:3: label\(s\) \['z'\] not in the training split"):
        dm.prepare_data()
    listed = LabeledDataModule("classification", {"train": str(train), "val": str(train)}, labels=["x"],
                               tokenizer=WORDPIECE, cache_dir=str(tmp_path / "c"))
    with pytest.raises(DataError, match=rf"{train}:2: label\(s\) \['y'\] not in data.labels"):
        listed.prepare_data()
    conll_train, conll_val = tmp_path / "t.conll", tmp_path / "v.conll"
    conll_train.write_text("a\tO\nb\tB-x\n\nc\tO\n")
    conll_val.write_text("a\tO\n\nb\tO\nc\tB-new\n")
    ner = LabeledDataModule("token_classification", {"train": str(conll_train), "val": str(conll_val)},
                            tokenizer=WORDPIECE, cache_dir=str(tmp_path / "c"))
    with pytest.raises(DataError, match=rf"{conll_val}:3: label\(s\) \['B-new'\] not in the training split"):
        ner.prepare_data()


def test_one_file_is_split_by_a_hash_of_a_field(tmp_path):
    """dialogue_chatterbot comes as one file: split_by=prompt sends every pair with the same prompt to
    the same split, each record to exactly one split, in the configured proportions."""
    path = DATA / "dialogue_chatterbot.jsonl"
    one = {"train": str(path), "val": str(path), "test": str(path)}
    with pytest.raises(ConfigError, match="val_fraction > 0"):
        LabeledDataModule("classification", one, split_by="prompt", val_fraction=0.5, test_fraction=0.5)
    dm = LabeledDataModule("classification", one, text_field="prompt", label_field="topic", split_by="prompt",
                           val_fraction=0.1, test_fraction=0.1, tokenizer=WORDPIECE, cache_dir=str(tmp_path / "c"))
    dm.prepare_data()
    parts = {part: list(dm.split_records(part)) for part in ("train", "val", "test")}
    total = sum(1 for _ in read_records(path))
    assert sum(map(len, parts.values())) == total == 1243
    for part, share in (("val", 0.1), ("test", 0.1), ("train", 0.8)):
        assert abs(len(parts[part]) / total - share) < 0.05, part  # a hash split of ~600 distinct prompts
    prompts = {part: {r["prompt"] for r in records} for part, records in parts.items()}
    assert not (prompts["train"] & prompts["val"]) and not (prompts["train"] & prompts["test"])
    assert not (prompts["val"] & prompts["test"])
    assert set(dm.labels) == {r["topic"] for r in parts["train"]}


def test_tokenizer_cache_key_follows_the_training_text(tmp_path):
    """A from-scratch tokenizer is trained on the training split only: another split of the same file
    (other fractions) or other text fields must train a new one, not reuse the cached one."""
    path = DATA / "dialogue_chatterbot.jsonl"
    one = {"train": str(path), "val": str(path), "test": str(path)}

    def vocab(**kw):
        dm = LabeledDataModule("classification", one, label_field="topic", split_by="prompt", labels=None,
                               tokenizer=WORDPIECE, cache_dir=str(tmp_path / "c"), **kw)
        dm.prepare_data()
        return dm.tokenizer.get_vocab()

    base = vocab(text_field="prompt", val_fraction=0.1, test_fraction=0.1)
    assert vocab(text_field="prompt", val_fraction=0.1, test_fraction=0.1) == base  # the cache hit
    assert vocab(text_field="prompt", val_fraction=0.4, test_fraction=0.1) != base
    assert vocab(text_field="response", val_fraction=0.1, test_fraction=0.1) != base


def test_spam_training_mixes_labels_from_the_first_batch():
    """spam.train lists all 3,295 ham before all 1,443 spam: the training permutation puts spam in the
    first 20 batches near its base rate (0.30; 320 draws, so 0.2-0.4 is 4 standard deviations), where
    file order (data.shuffle=false) gives none."""
    for shuffle, low, high in [(True, 0.2, 0.4), (False, 0.0, 0.0)]:
        dm = LabeledDataModule("classification", SPAM, tokenizer=WORDPIECE, labels=["ham", "spam"], batch_size=16,
                               shuffle=shuffle, block_size=64)
        dm.prepare_data()
        first = torch.cat([b["labels"] for b in batches(dm, "train", n=20)]).float()
        assert low <= first.mean() <= high, (shuffle, float(first.mean()))


def test_record_index_permutes_the_whole_sorted_split(tmp_path):
    """debian_packages.train is sorted by package name, and the section follows the name (python3-*,
    rust-*): a 4,096-record buffer shuffle fed 0.6% `python` to the first 16,000 examples where the
    split has 7.5%. The permutation's first 2,000 records hold python near 7.5% (standard deviation
    0.6 points), and an epoch is every record once."""
    path = DATA / "debian_packages.train.jsonl.gz"
    index = RecordIndex(plain_copy(path, tmp_path), read_numbered_records(path))
    assert len(index) == 54186  # the data kit's README
    epoch = list(index.permuted("0:0"))
    python = sum(r["section"] == "python" for r in epoch[:2000]) / 2000
    assert 0.05 <= python <= 0.10, python
    assert sorted(r["package"] for r in epoch) == sorted(r["package"] for r in read_records(path))
    for rank in (0, 1):  # two ranks read disjoint halves of the same permutation, interleaved
        share = [r["package"] for r in itertools.islice(index.permuted("0:0", rank, 2), 500)]
        assert share == [r["package"] for r in epoch[rank:1000:2]]
    assert [r["package"] for r in itertools.islice(index.permuted("0:0"), 50)] == [r["package"] for r in epoch[:50]]
    assert [r["package"] for r in itertools.islice(index.permuted("0:1"), 50)] != [r["package"] for r in epoch[:50]]
    with gzip.open(path) as f:
        assert plain_copy(path, tmp_path).read_bytes() == f.read()  # the cached copy, reused
    assert len(list((tmp_path / "plain").iterdir())) == 1


def test_record_index_reads_conll_sentences_and_split_records(tmp_path):
    path = DATA / "ner_wnut.train.conll"
    index = RecordIndex(plain_copy(path, tmp_path), read_numbered_records(path))
    assert plain_copy(path, tmp_path) == path and not (tmp_path / "plain").exists()  # no copy of a plain file
    def key(sentence):
        return tuple(sentence["tokens"]), tuple(sentence["tags"])

    assert sorted(map(key, index.permuted("7:0"))) == sorted(map(key, read_records(path)))
    # a one-file data set: the index holds only the split's records, with their line numbers
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(f'{{"text": "t{i}", "label": "{i % 2}"}}\n' + ("\n" if i % 3 == 0 else "") for i in range(60)))
    dm = LabeledDataModule("classification", {"train": "rows.jsonl", "val": "rows.jsonl"}, data_dir=str(tmp_path),
                           cache_dir=str(tmp_path / "c"), split_by="text", val_fraction=0.2, test_fraction=0.0,
                           tokenizer=WORDPIECE)
    dm.prepare_data()
    train = [r["text"] for r in dm.split_records("train")]
    assert 30 < len(train) < 60 and sorted(r["text"] for r in dm.permuted_records("train", "0:0")) == sorted(train)


def test_record_index_reports_a_bad_line_with_file_and_line(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(DataError, match=r"rows.jsonl:2: invalid JSON"):
        RecordIndex(rows, read_numbered_records(rows))
