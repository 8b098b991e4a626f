import gzip
import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import SHAKESPEARE, require_data
from lmpretrain.data import PackedBlocks, PackedTextDataModule
from lmpretrain.data.corpus import TextSource, resolve_files
from lmpretrain.errors import DataError
from lmpretrain.tokenizers import TokenizerConfig, train_tokenizer

BLOCK, BATCH = 8, 3


@pytest.fixture
def arange_tokens(tmp_path):
    """A token file whose token i is i: a block is identified by its first token."""
    path = tmp_path / "tokens.bin"
    np.arange(40 * BLOCK + 1, dtype=np.uint32).tofile(path)  # exactly 40 blocks of BLOCK + 1
    return path


def block_ids(batches):
    return [int(x) // BLOCK for b in batches for x in b["input_ids"][:, 0]]


def test_block_targets_are_next_tokens(arange_tokens):
    ds = PackedBlocks(arange_tokens, "uint32", BLOCK, BATCH, shuffle=False)
    sample = next(iter(ds))
    assert torch.equal(sample["labels"], sample["input_ids"] + 1)
    assert sample["input_ids"].shape == (BLOCK,)


def test_two_ranks_two_workers_cover_every_block_once(arange_tokens):
    """2 ranks x 2 DataLoader worker processes: every block of the epoch exactly once."""
    seen = []
    for rank in range(2):
        ds = PackedBlocks(arange_tokens, "uint32", BLOCK, BATCH, shuffle=True, seed=3, epochs=1, rank=rank, world_size=2)
        seen += block_ids(DataLoader(ds, batch_size=BATCH, num_workers=2))
    assert sorted(seen) == list(range(40))


def test_worker_count_does_not_change_the_rank_stream(arange_tokens):
    def stream(workers):
        ds = PackedBlocks(arange_tokens, "uint32", BLOCK, BATCH, seed=5, epochs=2, rank=1, world_size=2)
        return block_ids(DataLoader(ds, batch_size=BATCH, num_workers=workers))

    assert stream(0) == stream(2)


def test_epochs_reshuffle_and_shift(arange_tokens):
    ds = PackedBlocks(arange_tokens, "uint32", BLOCK, BATCH, seed=0, epochs=2)
    starts = [int(s["input_ids"][0]) for s in ds]
    first, second = starts[:40], starts[40:]
    assert sorted(first) == [i * BLOCK for i in range(40)]
    offset = second[0] % BLOCK
    assert 0 < offset < BLOCK and all(s % BLOCK == offset for s in second)  # new block boundaries
    assert len(second) == 39  # a shifted epoch fits one block fewer


def test_resume_mid_epoch_gives_the_same_next_batches(arange_tokens):
    full = block_ids(DataLoader(PackedBlocks(arange_tokens, "uint32", BLOCK, BATCH, seed=1, epochs=2), batch_size=BATCH))
    resumed = PackedBlocks(arange_tokens, "uint32", BLOCK, BATCH, seed=1, epochs=2, start_batch=5)
    assert block_ids(DataLoader(resumed, batch_size=BATCH, num_workers=2)) == full[5 * BATCH :]


def test_tail_split_is_first_90_percent_then_last_10():
    require_data("tinyshakespeare.txt")
    src = TextSource([SHAKESPEARE], split="tail", val_fraction=0.1)
    train, val = "".join(src.texts("train")), "".join(src.texts("val"))
    original = SHAKESPEARE.read_text(encoding="utf-8")
    assert train + val == original
    assert abs(len(train) / len(original) - 0.9) < 0.001


def test_hash_split_is_deterministic_and_disjoint(tmp_path):
    path = tmp_path / "docs.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for i in range(2000):
            f.write(json.dumps({"body": f"document number {i}"}) + "\n")
    src = TextSource([path], field="body", split="hash", val_fraction=0.2)
    train, val = set(src.texts("train")), set(src.texts("val"))
    assert not train & val and len(train) + len(val) == 2000
    assert abs(len(val) / 2000 - 0.2) < 3 * (0.2 * 0.8 / 2000) ** 0.5
    assert val == set(TextSource([path], field="body", split="hash", val_fraction=0.2).texts("val"))


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_tokenizer_round_trip(kind):
    require_data("tinyshakespeare.txt")
    cfg = TokenizerConfig(kind=kind, vocab_size=None if kind == "char" else 500, unk_token="<unk>" if kind == "char" else None)
    text = SHAKESPEARE.read_text(encoding="utf-8")
    tok = train_tokenizer(cfg, iter(text.splitlines(keepends=True)))
    sample = text[:5000]
    assert tok.decode(tok.encode(sample).ids, skip_special_tokens=False) == sample
    if kind == "bpe":  # byte-level: anything round-trips, even text unlike the corpus
        other = "naïve café — 東京 🙂\n\ttabs"
        assert tok.decode(tok.encode(other).ids) == other
        assert len(tok.encode(sample).ids) < len(sample) / 1.5  # merges were learned (500 vocab: ~1.9 chars/token)
    else:
        assert tok.get_vocab_size() == 65 + 2  # 65 characters + <|endoftext|> + <unk>


def test_wordpiece_ids_do_not_depend_on_how_the_trainer_numbered_them():
    """The `tokenizers` WordPiece trainer numbers what it learns through hash maps: two processes
    trained the same tokens under different ids (2,026 of 8,192 on the spam e-mails), so a seeded run
    from scratch trained a different model each time. canonical_ids numbers a vocabulary the same
    way whatever ids it came with (specials first, the rest by string), keeps the token strings of
    every encoding, and the trainer's output goes through it."""
    import random

    from tokenizers import Tokenizer

    from lmpretrain.tokenizers.build import canonical_ids

    require_data("tinyshakespeare.txt")
    text = SHAKESPEARE.read_text(encoding="utf-8")[:300_000]
    cfg = TokenizerConfig(kind="wordpiece", vocab_size=1000, special_tokens=["[PAD]", "[CLS]"], unk_token="[UNK]")
    trained = train_tokenizer(cfg, iter(text.splitlines()))
    state = json.loads(trained.to_str())
    specials = cfg.special_tokens  # [PAD], [CLS], then the eos and unk tokens the config adds
    n = len(specials)
    rest = sorted(state["model"]["vocab"], key=state["model"]["vocab"].get)[n:]
    for seed in (0, 1):  # the same vocabulary as another process might have numbered it
        shuffled = rest[:]
        random.Random(seed).shuffle(shuffled)
        state["model"]["vocab"] = {t: i for i, t in enumerate([*specials, *shuffled])}
        other = Tokenizer.from_str(json.dumps(state))
        assert other.to_str() != trained.to_str()
        assert canonical_ids(other, n).to_str() == trained.to_str()
        sample = text[:3000]
        assert other.encode(sample).tokens == trained.encode(sample).tokens
    assert [trained.id_to_token(i) for i in range(n)] == specials == ["[PAD]", "[CLS]", "<|endoftext|>", "[UNK]"]
    assert [trained.id_to_token(i) for i in range(n, 1000)] == sorted(rest)


def test_concurrent_trainings_of_one_tokenizer_end_with_the_first_published(tmp_path, monkeypatch):
    """Two processes that train the same WordPiece at once can learn different ones (ties between
    equally frequent merges are broken per process: 18 of 5,632 tokens differed on the WNUT tweets),
    and a cache write that replaced left each with its own. Now the one published first wins: a
    process that finds the cache filled while it trained uses that file, and the file is kept."""
    from tokenizers import Tokenizer

    from lmpretrain.tokenizers import build

    cfg = TokenizerConfig(kind="wordpiece", vocab_size=200, special_tokens=["[PAD]"], unk_token="[UNK]")
    texts = ["the cat sat on the mat", "a dog ate the hat"] * 20
    winner = train_tokenizer(cfg, iter(["zebras quiz jumping foxes"] * 20))  # stands for another process's result
    real_train = build.train_tokenizer
    # the cache path this config and corpus get (a first training in another cache folder shows it)
    _, probe = build.load_or_train_tokenizer(cfg, lambda: iter(texts), "corpus", tmp_path / "probe")
    target = tmp_path / "cache" / probe.parent.name / "tokenizer.json"

    def train_while_another_publishes(c, t):
        ours = real_train(c, t)
        target.parent.mkdir(parents=True, exist_ok=True)
        winner.save(str(target))  # the other process finished first
        return ours

    monkeypatch.setattr(build, "train_tokenizer", train_while_another_publishes)
    tok, path = build.load_or_train_tokenizer(cfg, lambda: iter(texts), "corpus", tmp_path / "cache")
    assert path == target
    assert tok.to_str() == winner.to_str() != Tokenizer.from_file(str(probe)).to_str()
    assert Tokenizer.from_file(str(path)).to_str() == winner.to_str()  # kept, not replaced
    assert sorted(p.name for p in path.parent.iterdir()) == ["tokenizer.json"]  # no temp file left


def test_datamodule_streams_real_corpus_and_separates_documents(tmp_path):
    docs = ["first document.", "second one, a bit longer.", "third."] * 50
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    dm = PackedTextDataModule([str(path)], tokenizer={"kind": "char"}, block_size=16, batch_size=4,
                              split="tail", val_fraction=0.1, cache_dir=str(tmp_path / "cache"))
    dm.setup("fit")
    eos = dm.eos_id
    train_tokens = np.fromfile(dm.token_files["train"], dtype=dm.dtype)
    assert (train_tokens == eos).sum() == dm.token_counts["train"] - sum(len(d) for d in docs[:135])
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (4, 16) and batch["input_ids"].dtype == torch.long


def write(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


@pytest.mark.parametrize(
    "name,data,message",
    [
        ("empty.txt", b"", "corpus is empty"),
        ("binary.txt", b"hello\n\x00\x01\x02\xff\n", r"binary.txt:2: binary data"),
        ("latin1.txt", "caf\u00e9\n".encode("latin-1"), r"latin1.txt:1: not UTF-8 \(byte 0xe9"),
        ("nofield.jsonl", b'{"text": "a"}\n{"body": "b"}\n', r"nofield.jsonl:2: no field 'text'"),
        ("broken.jsonl", b'{"text": "a"}\n{"text": \n', r"broken.jsonl:2: invalid JSON"),
    ],
)
def test_bad_corpus_is_a_clear_data_error(tmp_path, name, data, message):
    path = write(tmp_path, name, data)
    dm = PackedTextDataModule([str(path)], tokenizer={"kind": "char"}, block_size=8, cache_dir=str(tmp_path / "c"))
    with pytest.raises(DataError, match=message):
        dm.prepare_data()


def test_missing_file_and_checksum(tmp_path):
    with pytest.raises(DataError, match="does not exist; set LMPRETRAIN_DATA"):
        resolve_files(["nope.txt"], tmp_path)
    with pytest.raises(DataError, match="no file matches"):
        resolve_files(["*.nothing"], tmp_path)
    good = write(tmp_path, "a.txt", b"abc\n")
    with pytest.raises(DataError, match="expected 00"):
        resolve_files(["a.txt"], tmp_path, checksums={"a.txt": "00"})
    assert resolve_files([str(good)], "/elsewhere") == [good]


def test_download_once_into_cache_with_checksum(tmp_path):
    """A missing file with a URL is fetched once (file:// here: no network in tests), hash-checked."""
    require_data("tinyshakespeare.txt")
    url = SHAKESPEARE.as_uri()
    sha = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    empty_data_dir, cache = tmp_path / "data", tmp_path / "cache"
    empty_data_dir.mkdir()
    (path,) = resolve_files(["tinyshakespeare.txt"], empty_data_dir, cache, {"tinyshakespeare.txt": sha},
                            {"tinyshakespeare.txt": url})
    assert path == cache / "downloads" / "tinyshakespeare.txt" and path.stat().st_size == 1115394
    with pytest.raises(DataError, match="download of .* has sha256"):
        resolve_files(["x.txt"], empty_data_dir, cache, {"x.txt": "0" * 64}, {"x.txt": url})
    assert not (cache / "downloads" / "x.txt").exists()  # a bad download never becomes visible


def test_wordpiece_and_unigram_train_to_the_requested_vocabulary():
    require_data("tinyshakespeare.txt")
    text = SHAKESPEARE.read_text(encoding="utf-8")
    sample = text[:3000]
    for kind in ("wordpiece", "unigram"):
        tok = train_tokenizer(TokenizerConfig(kind=kind, vocab_size=800), iter(text.splitlines(keepends=True)))
        assert tok.get_vocab_size() == 800, kind
        ids = tok.encode(sample).ids
        assert len(ids) < len(sample) / 2, kind  # subwords, not characters
        decoded = tok.decode(ids)
        if kind == "unigram":  # SentencePiece-style: lossless, whitespace and newlines included
            assert decoded == sample
        else:  # WordPiece (BERT) splits punctuation and normalises whitespace: same words, not same bytes
            assert "".join(decoded.split()) == "".join(sample.split())
