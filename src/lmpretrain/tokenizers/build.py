"""Build, train and load `tokenizers.Tokenizer` objects.

Kinds: `char` (one id per character seen in the corpus), `bpe` (byte-level BPE, GPT-2 style: never
an unknown token, lossless round trip), `wordpiece` (BERT style), `unigram` (SentencePiece style).
A trained tokenizer is saved as `tokenizer.json` under a cache key derived from its config and the
corpus fingerprint, so the next run loads it instead of training again. `path=` loads any existing
`tokenizer.json` instead of training.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from lmpretrain.atomic import atomic_create
from lmpretrain.errors import ConfigError

KINDS = ("char", "bpe", "wordpiece", "unigram")


@dataclass
class TokenizerConfig:
    kind: str = "char"
    path: str | None = None  # existing tokenizer.json: loaded as is, no training
    vocab_size: int | None = None  # None for char (the corpus decides)
    min_frequency: int = 2
    special_tokens: list[str] = field(default_factory=lambda: ["<|endoftext|>"])
    eos_token: str | None = "<|endoftext|>"  # document separator when packing
    unk_token: str | None = None  # char/wordpiece/unigram need one for unseen symbols
    lowercase: bool = False
    normalization: str | None = None  # NFC | NFKC | None

    def __post_init__(self) -> None:
        if self.path is None and self.kind not in KINDS:
            raise ConfigError(f"tokenizer.kind={self.kind!r} is unknown; use one of {KINDS} or set tokenizer.path")
        if self.kind != "char" and self.path is None and not self.vocab_size:
            raise ConfigError(f"tokenizer.kind={self.kind} needs tokenizer.vocab_size (e.g. 8000)")
        for tok in (self.eos_token, self.unk_token):
            if tok is not None and tok not in self.special_tokens:
                self.special_tokens = [*self.special_tokens, tok]
        if self.path is not None and not Path(self.path).expanduser().is_file():
            raise ConfigError(f"tokenizer.path={self.path} does not exist; give a tokenizer.json or unset it")


def _normalizer(cfg: TokenizerConfig):
    steps = []
    if cfg.normalization:
        steps.append({"NFC": normalizers.NFC, "NFKC": normalizers.NFKC}[cfg.normalization.upper()]())
    if cfg.lowercase:
        steps.append(normalizers.Lowercase())
    return normalizers.Sequence(steps) if steps else None


def build_char_tokenizer(chars: Iterable[str], cfg: TokenizerConfig) -> Tokenizer:
    """One token per character. Specials take the first ids, then characters in sorted order
    (nanoGPT's shakespeare_char order)."""
    vocab = {tok: i for i, tok in enumerate(cfg.special_tokens)}
    for ch in sorted(set(chars)):
        vocab.setdefault(ch, len(vocab))
    # A BPE model with no merges is exactly a character tokenizer; `Fuse` joins without spaces.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=cfg.unk_token))
    tok.decoder = decoders.Fuse()
    if (norm := _normalizer(cfg)) is not None:
        tok.normalizer = norm
    tok.add_special_tokens(cfg.special_tokens)
    return tok


def train_tokenizer(cfg: TokenizerConfig, texts: Iterable[str]) -> Tokenizer:
    """Train a tokenizer of `cfg.kind` on an iterator of texts (streamed, never all in memory)."""
    if cfg.kind == "char":
        chars: set[str] = set()
        for text in texts:
            chars.update(text)
        return build_char_tokenizer(chars, cfg)
    if cfg.kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=cfg.vocab_size,
            min_frequency=cfg.min_frequency,
            special_tokens=cfg.special_tokens,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    elif cfg.kind == "wordpiece":
        unk = cfg.unk_token or "[UNK]"
        tok = Tokenizer(models.WordPiece(unk_token=unk))
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=cfg.vocab_size,
            min_frequency=cfg.min_frequency,
            special_tokens=list(dict.fromkeys([*cfg.special_tokens, unk])),
            show_progress=False,
        )
    else:  # unigram
        unk = cfg.unk_token or "<unk>"
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(
            vocab_size=cfg.vocab_size,
            special_tokens=list(dict.fromkeys([*cfg.special_tokens, unk])),
            unk_token=unk,
            show_progress=False,
        )
    if (norm := _normalizer(cfg)) is not None:
        tok.normalizer = norm
    tok.train_from_iterator(texts, trainer=trainer)
    return canonical_ids(tok, len(trainer.special_tokens)) if cfg.kind == "wordpiece" else tok


def canonical_ids(tok: Tokenizer, n_special: int) -> Tokenizer:
    """A trained WordPiece tokenizer with ids that do not depend on the process that trained it.

    The `tokenizers` WordPiece trainer numbers the tokens it learns through hash maps, so two runs on
    the same corpus learn the same tokens under different ids (a quarter of 8,192 on the spam
    e-mails, the `##` alphabet first) and a seeded run from scratch trained a different model each
    time. The specials keep their ids (they come first); the other tokens follow in string order:
    WordPiece encodes by looking tokens up by string, so the ids carry no meaning. BPE's trainer is
    deterministic (its ids are its merge order).

    What renumbering cannot fix: the trainer breaks ties between equally frequent merges by those
    per-process ids, so at the edge of the vocabulary a few tokens can still differ between processes
    (4 of 1,000 in one of five runs on tiny-shakespeare; none of 8,192 in two runs on spam; on the
    1,925 WNUT tweets, where the merges run out before the vocabulary fills, 18 tokens and the
    vocabulary size, 5,632 vs 5,630, so the scratch NER model differed too). The cache makes every
    later run of a checkout reuse the first tokenizer, and `load_or_train_tokenizer` keeps the first
    one published when processes train at once. The
    Unigram trainer is not deterministic either, and cannot be fixed by
    renumbering: its scores differ in the last bits between processes, and the rare characters it
    appends get made-up scores in hash-map order; no preset uses it."""
    state = json.loads(tok.to_str())
    vocab = state["model"]["vocab"]
    by_id = sorted(vocab, key=vocab.get)
    state["model"]["vocab"] = {t: i for i, t in enumerate([*by_id[:n_special], *sorted(by_id[n_special:])])}
    return Tokenizer.from_str(json.dumps(state))


def tokenizer_fingerprint(tok: Tokenizer) -> str:
    return hashlib.sha256(tok.to_str().encode()).hexdigest()[:16]


def load_or_train_tokenizer(
    cfg: TokenizerConfig,
    texts: Callable[[], Iterable[str]],
    corpus_fingerprint: str,
    cache_dir: str | os.PathLike,
) -> tuple[Tokenizer, Path]:
    """Load `cfg.path`, or the cached tokenizer trained on this corpus, or train and cache one.

    Returns the tokenizer and the `tokenizer.json` it lives in.
    """
    if cfg.path is not None:
        path = Path(cfg.path).expanduser()
        return read_tokenizer(path, "tokenizer.path"), path
    # WordPiece tokenizers cached before canonical_ids numbered their tokens per process: not reused
    ids = {"ids": "canonical"} if cfg.kind == "wordpiece" else {}
    key_src = json.dumps({"cfg": asdict(cfg), "corpus": corpus_fingerprint, **ids}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{cfg.kind}-{key}" / "tokenizer.json"
    if path.is_file():
        return Tokenizer.from_file(str(path)), path
    tok = train_tokenizer(cfg, texts())
    path.parent.mkdir(parents=True, exist_ok=True)
    # Never half-written, and never replaced: two processes that train the same tokenizer at once (two
    # runs of `bench/downstream.py --jobs 2` on a cold cache) can learn different ones (`canonical_ids`:
    # 18 of 5,632 WordPiece tokens differed on the WNUT tweets, and the vocabulary sizes), so the one
    # that lands first is the one both use.
    if not atomic_create(path, lambda tmp: tok.save(str(tmp))):
        return Tokenizer.from_file(str(path)), path
    return tok, path


def read_tokenizer(path: Path, key: str) -> Tokenizer:
    """A tokenizer.json the user points to (`key` names the setting), or one ConfigError saying why not."""
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 - the tokenizers library raises a bare Exception
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{key}={path} is not a tokenizer.json the tokenizers library can read ({why}); give "
                          f"a file saved by Tokenizer.save, or unset {key} to train one") from None
