"""`PackedTextDataModule`: plain-text / jsonl files -> tokenizer -> packed blocks, streamed.

`prepare_data` (once, on local rank 0) resolves and verifies the files, trains or loads the
tokenizer, and tokenizes each split into a cached token file; training reads blocks from them lazily. The
corpus is never held in memory. The module's `state_dict` records how many training batches
were consumed, so a checkpoint taken mid-epoch resumes with exactly the next batches.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

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


class PackedTextDataModule(PackedBlocksDataModule):
    """`corpus`: the `TextCorpus` keys (field, split, val_fraction, data_dir, cache_dir, checksums, urls).
    A tokenizer handed over with `connect(tokenizer=...)` (a checkpoint's) replaces training one."""

    takes_tokenizer = True

    def __init__(self, files: list[str], tokenizer: dict | None = None, block_size: int = 256, batch_size: int = 12,
                 num_workers: int = 0, seed: int = 0, **corpus):
        super().__init__(block_size, batch_size, num_workers, seed)
        self.corpus = TextCorpus.from_config(files, to_dict(tokenizer), corpus)  # plain values: Hydra passes ListConfigs
        self.token_files: dict[str, Path] = {}

    @property
    def eos_id(self) -> int | None:
        eos = self.corpus.tokenizer.eos_token
        return None if eos is None else self.tokenizer.token_to_id(eos)

    def prepare_data(self) -> None:
        """Idempotent and cached: a second call (or a second rank) only opens the cache."""
        if self.token_files:
            return
        source, fingerprint, self.tokenizer = self.corpus.open(self.tokenizer)
        paths = source.paths
        if self.corpus.tokenizer.eos_token is not None and self.eos_id is None:
            raise ConfigError(
                f"tokenizer has no {self.corpus.tokenizer.eos_token!r} token; set tokenizer.eos_token to one it has, or null"
            )
        self.dtype = token_dtype(self.tokenizer.get_vocab_size())
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
            meta = {"files": [str(p) for p in paths], "tokens": counts, "dtype": self.dtype.name}
            tmp = meta_path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(meta, indent=2))
            os.replace(tmp, meta_path)  # written last: its presence means the token files are complete
        files = ", ".join(map(str, paths))
        for part in SPLITS:
            if meta["tokens"][part] == 0:
                what = "the corpus is empty" if part == "train" else "the validation split is empty"
                raise DataError(f"{what} ({files}); add text or raise data.val_fraction")
        self.check_one_block(meta["tokens"], files)
        self.token_files = {part: folder / f"{part}.bin" for part in SPLITS}
        self.token_counts = meta["tokens"]

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
        return [[str(self.token_files[part])]]
