"""`ShardsDataModule`: the tokenized shards written by `lmpretrain.prepare`, mixed and streamed.

Each source's shards are read lazily, block by block (pread); training draws sources by `weights` with a seeded
generator (see `data/packed_blocks.py` for the exact order), packs blocks, and shards them across ranks
and workers. Validation reads every source's validation shards once, in order. The tokenizer is
the one `prepare` trained (`<dir>/tokenizer.json`), checked against the manifest's hash.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from lmpretrain.data.corpus import sha256_file
from lmpretrain.data.shard_format import SPLITS, read_manifest
from lmpretrain.data.packed_blocks import PackedBlocksDataModule
from lmpretrain.errors import ConfigError, DataError


class ShardsDataModule(PackedBlocksDataModule):
    def __init__(
        self,
        dir: str,
        weights: dict[str, float] | None = None,
        block_size: int = 256,
        batch_size: int = 12,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__(block_size, batch_size, num_workers, seed)
        self.dir = Path(dir).expanduser()
        self.source_weights = dict(weights) if weights else None
        self.manifest = None

    def prepare_data(self) -> None:
        if self.manifest is not None:
            return
        manifest = read_manifest(self.dir)
        tok_path = self.dir / manifest.raw["tokenizer"]["file"]
        if sha256_file(tok_path) != manifest.tokenizer_sha256:
            raise DataError(f"{tok_path} does not match the manifest's tokenizer hash; re-run lmpretrain.prepare")
        self.tokenizer = Tokenizer.from_file(str(tok_path))
        self.manifest, self.dtype = manifest, manifest.dtype
        names = self.source_names("train")
        if self.source_weights is not None:
            if unknown := sorted(set(self.source_weights) - set(names)):
                raise ConfigError(f"data.weights names unknown source(s) {unknown}; the shards hold {names}")
            self.weights = [float(self.source_weights.get(n, 0.0)) for n in names]
        for part in SPLITS:
            if not any(s.tokens for s in manifest.shards_for(part)):
                raise DataError(f"{self.dir} has no {part} tokens; re-run prepare with more text or a larger val_fraction")

    def source_names(self, part: str) -> list[str]:
        return sorted({s.source for s in self.manifest.shards_for(part)})

    def sources(self, part: str) -> list[list[str]]:
        return [
            [str(self.dir / s.bin) for s in self.manifest.shards_for(part, name) if s.tokens]
            for name in self.source_names(part)
        ]
