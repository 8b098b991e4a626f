"""Token files and the packed-block stream read from them.

A split is tokenized once, streaming, into flat token files (uint16 when the vocabulary fits,
else uint32) with the EOS id after every document. Training reads blocks lazily: a block is
`block_size + 1` consecutive tokens of one file (inputs and their next-token targets), so blocks
overlap by one token and every token is a target once per epoch.

Block order is a pure function of (seed, sample index); ownership by rank and worker follows the
streaming core (`data/streaming.py`). That is what makes "no block duplicated or dropped across
ranks x workers", source mixing by weight, and exact mid-epoch resume possible:

    source of global sample g : a seeded weighted draw (always 0 with one source)
    block of that sample      : the source's next block; each source walks its own seeded
                                permutation per epoch, epochs chained
    rank, batch, worker       : `ShardedStream` over the global samples
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from lmpretrain.data.shard_format import token_dtype
from lmpretrain.data.streaming import ShardedStream, StreamingDataModule, take_rank
from lmpretrain.errors import DataError

ENCODE_BATCH = 1024  # lines per tokenizer.encode_batch call (the Rust side parallelizes)
CHOICE_CHUNK = 1 << 16  # source draws generated per numpy call


def write_token_file(
    pieces: Iterable[tuple[str, bool]], tokenizer, eos_id: int | None, path: Path, dtype: np.dtype
) -> int:
    """Tokenize (text, ends_document) pieces into `path`, atomically. Returns the token count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    n_tokens, batch = 0, []

    def flush(f) -> int:
        ids: list[int] = []
        for (_, ends_doc), enc in zip(batch, tokenizer.encode_batch([t for t, _ in batch], add_special_tokens=False)):
            ids.extend(enc.ids)
            if ends_doc and eos_id is not None:
                ids.append(eos_id)
        np.asarray(ids, dtype=dtype).tofile(f)
        batch.clear()
        return len(ids)

    with open(tmp, "wb") as f:
        for piece in pieces:
            batch.append(piece)
            if len(batch) == ENCODE_BATCH:
                n_tokens += flush(f)
        if batch:
            n_tokens += flush(f)
    os.replace(tmp, path)
    return n_tokens


class BlockSource:
    """The blocks of one source (one or more token files; a block never spans two files).

    `shuffle=True`: a new seeded permutation every epoch, and from the second epoch on a seeded
    start offset in [0, block_size) so the model sees new block boundaries each epoch (nanoGPT
    samples random offsets for the same reason). `shuffle=False`: file order, offset 0.
    """

    def __init__(self, files: Sequence[str], dtype: np.dtype, block_size: int, shuffle: bool, seed: int):
        self.files, self.dtype, self.block_size = [str(f) for f in files], dtype, block_size
        self.shuffle, self.seed = shuffle, seed
        self.sizes = np.array([os.path.getsize(f) // dtype.itemsize for f in self.files], dtype=np.int64)
        self._epoch_starts = [0]  # cumulative block count at the start of each epoch
        self._cached: tuple[int, np.ndarray, np.ndarray] | None = None  # (epoch, order, file block ends)

    def offset(self, epoch: int) -> int:
        if not self.shuffle or epoch == 0:
            return 0
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + 2 * epoch + 1)
        return int(torch.randint(self.block_size, (1,), generator=gen))

    def file_blocks(self, epoch: int) -> np.ndarray:
        return np.maximum(0, (self.sizes - 1 - self.offset(epoch)) // self.block_size)

    def num_blocks(self, epoch: int = 0) -> int:
        return int(self.file_blocks(epoch).sum())

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        if self._cached is None or self._cached[0] != epoch:
            n = self.num_blocks(epoch)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + 2 * epoch)).numpy() \
                if self.shuffle else np.arange(n)
            self._cached = (epoch, order, np.cumsum(self.file_blocks(epoch)))
        return self._cached[1], self._cached[2]

    def epoch_of(self, k: int) -> tuple[int, int]:
        """(epoch, position within it) of the k-th block of the chained-epochs stream."""
        while self._epoch_starts[-1] <= k:
            self._epoch_starts.append(self._epoch_starts[-1] + self.num_blocks(len(self._epoch_starts) - 1))
        epoch = int(np.searchsorted(self._epoch_starts, k, side="right")) - 1
        return epoch, k - self._epoch_starts[epoch]

    def locate(self, k: int) -> tuple[int, int]:
        """(file index, first token) of the k-th block of the stream."""
        epoch, j = self.epoch_of(k)
        order, ends = self._epoch(epoch)
        block = int(order[j])
        f = int(np.searchsorted(ends, block, side="right"))
        first_in_file = block - (int(ends[f - 1]) if f else 0)
        return f, self.offset(epoch) + first_in_file * self.block_size


class PackedBlocks(ShardedStream):
    """Blocks of `block_size + 1` tokens from memory-mapped token files, mixed and sharded.

    `sources`: one token file, or a list of sources each given as a list of files. `weights`:
    sampling weight per source (default: proportional to size). `shuffle=True` gives an infinite
    stream (epochs chained, or `epochs` passes over the first source); `shuffle=False` gives every
    block of every source once, in order (validation).
    """

    def __init__(
        self,
        sources: str | os.PathLike | Sequence[Sequence[str]],
        dtype: str,
        block_size: int,
        batch_size: int,
        weights: Sequence[float] | None = None,
        shuffle: bool = True,
        seed: int = 0,
        epochs: int | None = None,
        start_batch: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__(batch_size, start_batch, rank, world_size)
        if isinstance(sources, (str, os.PathLike)):
            sources = [[str(sources)]]
        self.dtype, self.block_size = np.dtype(dtype), block_size
        self.sources = [BlockSource(files, self.dtype, block_size, shuffle, seed + i) for i, files in enumerate(sources)]
        self.shuffle, self.seed, self.epochs = shuffle, seed, epochs
        sizes = np.array([s.num_blocks() for s in self.sources], dtype=np.float64)
        if sizes.sum() < world_size or (shuffle and (sizes == 0).any()):
            empty = [s.files for s, n in zip(self.sources, sizes) if n == 0] or [s.files for s in self.sources]
            raise DataError(
                f"too few tokens for a block of {block_size + 1} in {empty}; use a bigger corpus or a smaller "
                f"data.block_size"
            )
        w = sizes if weights is None else np.asarray(weights, dtype=np.float64)
        if len(w) != len(self.sources) or (w < 0).any() or w.sum() <= 0:
            raise DataError(f"data weights {list(w)} must be one non-negative number per source, not all zero")
        self.weights = w / w.sum()

    def _draws(self) -> Iterator[tuple[int, int]]:
        """(source, k) for global samples 0, 1, 2, ...: the k-th block of that source's stream."""
        if not self.shuffle:
            for s, source in enumerate(self.sources):
                for k in range(source.num_blocks()):
                    yield s, k
            return
        rng = np.random.Generator(np.random.PCG64(self.seed))
        taken = np.zeros(len(self.sources), dtype=np.int64)
        limit = None if self.epochs is None else sum(self.sources[0].num_blocks(e) for e in range(self.epochs))
        while True:
            draws = rng.choice(len(self.sources), size=CHOICE_CHUNK, p=self.weights) if len(self.sources) > 1 \
                else np.zeros(CHOICE_CHUNK, dtype=np.int64)
            for s in draws.tolist():
                if limit is not None and taken[0] >= limit:
                    return
                yield s, int(taken[s])
                taken[s] += 1

    def rank_stream(self) -> Iterator[tuple[int, int]]:
        return take_rank(self._draws(), self.rank, self.world_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        # pread, not np.memmap: mapped pages count as resident once touched, so after one shuffled
        # epoch a memory map of a 100 GB corpus shows 100 GB of RSS. pread keeps RSS flat (the OS page
        # cache still caches the file) at the cost of one syscall per block. The descriptors are
        # opened per iterator, i.e. in each DataLoader worker.
        self._fds: dict[tuple[int, int], int] = {}
        try:
            yield from super().__iter__()
        finally:
            for fd in self._fds.values():
                os.close(fd)

    def example(self, position: int, draw: tuple[int, int]) -> dict[str, torch.Tensor]:
        s, k = draw
        f, start = self.sources[s].locate(k)
        if (s, f) not in self._fds:
            self._fds[(s, f)] = os.open(self.sources[s].files[f], os.O_RDONLY)
        itemsize = self.dtype.itemsize
        raw = os.pread(self._fds[(s, f)], (self.block_size + 1) * itemsize, start * itemsize)
        chunk = torch.from_numpy(np.frombuffer(raw, dtype=self.dtype).astype(np.int64))
        return {"input_ids": chunk[:-1], "labels": chunk[1:]}


class PackedBlocksDataModule(StreamingDataModule):
    """A DataModule whose examples are packed blocks of token files. Subclasses give
    `sources(part)` -> list of sources (each a list of token files), `dtype`, and optionally
    `weights` (per training source)."""

    weights: list[float] | None = None
    dtype: np.dtype | None = None

    def sources(self, part: str) -> list[list[str]]:
        raise NotImplementedError

    def dataset(self, part: str) -> PackedBlocks:
        train = part == "train"
        return PackedBlocks(self.sources(part), self.dtype.name, self.block_size, weights=self.weights if train else None,
                            shuffle=train, seed=self.seed, **self.stream_args(part))


__all__ = ["BlockSource", "PackedBlocks", "PackedBlocksDataModule", "token_dtype", "write_token_file"]
