"""`PackedTextDataModule`: plain-text / jsonl files -> tokenizer -> packed blocks, streamed.

`prepare_data` (once, on local rank 0) resolves and verifies the files, trains or loads the
tokenizer, and tokenizes each split into a cached token file; training reads blocks from them lazily. The
corpus is never held in memory. The module's `state_dict` records how many training batches
were consumed, so a checkpoint taken mid-epoch resumes with exactly the next batches.

Replay (continual pretraining): `replay={files: [...], fraction: f}` tokenizes an earlier corpus with
the same tokenizer and mixes its training blocks in as a second source of `PackedBlocks`, so a
fraction f of the training blocks (in expectation; each block is a seeded draw) comes from it.
Validation stays on the new corpus alone.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from lmpretrain.config import to_dict
from lmpretrain.data.corpus import SPLITS, TextCorpus
from lmpretrain.data.packed_blocks import PackedBlocksDataModule, token_dtype, write_token_file
from lmpretrain.errors import ConfigError, DataError
from lmpretrain.tokenizers.build import tokenizer_fingerprint


def read_meta(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def read_replay(replay: dict | None, tokenizer: dict | None, corpus: dict) -> tuple[float, TextCorpus | None]:
    """`data.replay` -> (fraction, the replayed corpus or None). `files` and `fraction` are required
    together; the other keys are the corpus keys of `data` (split, val_fraction, field, ...), with
    data_dir and cache_dir taken from the new corpus unless given."""
    replay = dict(to_dict(replay) or {})
    fraction, files = replay.pop("fraction", None) or 0.0, replay.pop("files", None)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction < 1.0:
        raise ConfigError(f"data.replay.fraction={fraction!r} must be in [0, 1): the share of training blocks drawn "
                          f"from the replayed corpus, e.g. 0.2")
    if unknown := sorted(set(replay) - set(TextCorpus.KEYS)):
        raise ConfigError(f"data.replay has unknown key(s) {unknown}; valid: ['files', 'fraction', "
                          f"{', '.join(map(repr, TextCorpus.KEYS))}]")
    if fraction == 0.0:
        return 0.0, None
    if not files:
        raise ConfigError(f"data.replay.fraction={fraction} needs data.replay.files: the earlier corpus, e.g. "
                          f"data.replay.files=[tinyshakespeare.txt]")
    defaults = {k: corpus[k] for k in ("data_dir", "cache_dir") if corpus.get(k)}
    return float(fraction), TextCorpus.from_config(list(files), tokenizer, replay, **defaults)


class PackedTextDataModule(PackedBlocksDataModule):
    """`corpus`: the `TextCorpus` keys (field, split, val_fraction, data_dir, cache_dir, checksums, urls).
    A tokenizer handed over with `connect(tokenizer=...)` (a checkpoint's) replaces training one.
    `replay`: {files, fraction, and corpus keys}: see the module docstring."""

    takes_tokenizer = True

    def __init__(self, files: list[str], tokenizer: dict | None = None, block_size: int = 256, batch_size: int = 12,
                 num_workers: int = 0, seed: int = 0, replay: dict | None = None, eval_batch_size: int | None = None,
                 **corpus):
        super().__init__(block_size, batch_size, num_workers, seed, eval_batch_size)
        tokenizer, corpus = to_dict(tokenizer), to_dict(corpus)  # plain values: Hydra passes ListConfigs
        self.corpus = TextCorpus.from_config(files, tokenizer, corpus)
        self.replay_fraction, self.replay_corpus = read_replay(replay, tokenizer, corpus)
        self.token_files: dict[str, Path] = {}
        self.replay_files: dict[str, Path] = {}

    @property
    def eos_id(self) -> int | None:
        eos = self.corpus.tokenizer.eos_token
        return None if eos is None else self.tokenizer.token_to_id(eos)

    def prepare_data(self) -> None:
        """Idempotent and cached: a second call (or a second rank) only opens the cache."""
        if self.token_files:
            return
        source, fingerprint, self.tokenizer = self.corpus.open(self.tokenizer)
        if self.corpus.tokenizer.eos_token is not None and self.eos_id is None:
            raise ConfigError(
                f"tokenizer has no {self.corpus.tokenizer.eos_token!r} token; set tokenizer.eos_token to one it has, or null"
            )
        self.dtype = token_dtype(self.tokenizer.get_vocab_size())
        self.token_files, self.token_counts = self.tokenize(source, fingerprint)
        if self.replay_corpus is not None:  # the earlier corpus, read with this (the checkpoint's) tokenizer
            replay_source, replay_fingerprint, _ = self.replay_corpus.open(self.tokenizer)
            self.replay_files, self.replay_counts = self.tokenize(replay_source, replay_fingerprint)
            self.weights = [1.0 - self.replay_fraction, self.replay_fraction]

    def tokenize(self, source, fingerprint: str) -> tuple[dict[str, Path], dict[str, int]]:
        """Both splits of `source` as cached token files -> (paths, token counts); checked non-empty."""
        key = hashlib.sha256(
            json.dumps(
                [fingerprint, tokenizer_fingerprint(self.tokenizer),
                 self.eos_id, asdict(self.corpus.tokenizer)],
                sort_keys=True,
            ).encode()
        ).hexdigest()[:16]
        folder = self.corpus.cache_dir / "tokens" / key
        meta_path = folder / "meta.json"
        meta = read_meta(meta_path)
        if meta is None:
            counts = {
                part: write_token_file(source.pieces(part), self.tokenizer, self.eos_id, folder / f"{part}.bin", self.dtype)
                for part in SPLITS
            }
            meta = {"files": [str(p) for p in source.paths], "tokens": counts, "dtype": self.dtype.name}
            tmp = meta_path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(meta, indent=2))
            os.replace(tmp, meta_path)  # written last: its presence means the token files are complete
        files = ", ".join(map(str, source.paths))
        for part in SPLITS:
            if meta["tokens"][part] == 0:
                what = "the corpus is empty" if part == "train" else "the validation split is empty"
                raise DataError(f"{what} ({files}); add text or raise data.val_fraction")
        self.check_one_block(meta["tokens"], files)
        return {part: folder / f"{part}.bin" for part in SPLITS}, meta["tokens"]

    def unk_fraction(self, part: str = "train", replay: bool = False) -> float:
        """Share of a split's tokens that are the tokenizer's unknown token (characters a checkpoint's
        char tokenizer never saw map to it); 0.0 for a tokenizer without one."""
        unk = getattr(self.tokenizer.model, "unk_token", None)
        unk_id = self.tokenizer.token_to_id(unk) if unk else None
        if unk_id is None:
            return 0.0
        tokens = np.fromfile((self.replay_files if replay else self.token_files)[part], dtype=self.dtype)
        return float((tokens == unk_id).mean()) if len(tokens) else 0.0

    def check_one_block(self, tokens: dict[str, int], files: str) -> None:
        """Every split must hold one block (`block_size + 1` tokens: inputs and shifted targets); found
        here, before the Trainer starts, and said of the corpus files rather than of their token cache."""
        if self.block_size is None:  # not connected yet: the block stream checks it when built
            return
        need = self.block_size + 1
        for part in SPLITS:
            if tokens[part] < need:
                name, fix = ("training", "") if part == "train" else ("validation", "raise data.val_fraction, ")
                raise DataError(f"the {name} split of {files} has {tokens[part]} tokens, fewer than one block of "
                                f"data.block_size+1={need}; add text, {fix}or lower data.block_size")

    def sources(self, part: str) -> list[list[str]]:
        """The new corpus; for training also the replayed one (mixed by `self.weights`)."""
        replay = [[str(self.replay_files[part])]] if part == "train" and self.replay_files else []
        return [[str(self.token_files[part])], *replay]
