"""Token files and the packed-block stream read from them.

A split is tokenized once, streaming, into a flat token file (uint16 when the vocabulary fits,
else uint32) with the EOS id after every document. Training memory-maps that file: a block is
`block_size + 1` consecutive tokens (inputs and their next-token targets), so blocks overlap by
one token and every token is a target exactly once per epoch.

Block order and sharding are pure functions of (seed, epoch, rank, worker), which is what makes
"no block duplicated or dropped across ranks x workers" and exact mid-epoch resume possible:

    global stream of an epoch : a seeded permutation of block ids
    rank r of R               : every R-th entry starting at r; epochs are chained (infinite)
    batch k of rank r         : entries [k*B, (k+1)*B) of that rank's stream
    worker w of W             : batches start + w, start + w + W, ... (the DataLoader reads
                                workers round-robin, so the rank sees batches in order)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from lmpretrain.errors import DataError

ENCODE_BATCH = 1024  # lines per tokenizer.encode_batch call (the Rust side parallelizes)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


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


def read_meta(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


class PackedBlocks(IterableDataset):
    """Blocks of `block_size + 1` tokens from a memory-mapped token file, sharded by rank and worker.

    `shuffle=True`: a new seeded permutation every epoch, and from the second epoch on a seeded
    start offset in [0, block_size) so the model sees different block boundaries each epoch
    (nanoGPT samples random offsets for the same reason). Epochs are chained, so the stream is
    infinite unless `epochs` is given. `shuffle=False`: blocks in file order, one epoch.
    """

    def __init__(
        self,
        token_file: str | os.PathLike,
        dtype: str,
        block_size: int,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        epochs: int | None = None,
        start_batch: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.token_file, self.dtype = str(token_file), np.dtype(dtype)
        self.block_size, self.batch_size = block_size, batch_size
        self.shuffle, self.seed = shuffle, seed
        self.epochs = epochs if shuffle else 1
        self.start_batch, self.rank, self.world_size = start_batch, rank, world_size
        self._offsets: dict[int, int] = {}
        n_tokens = os.path.getsize(self.token_file) // self.dtype.itemsize
        if self.num_blocks(0, n_tokens) < world_size:
            raise DataError(
                f"{self.token_file} holds {n_tokens} tokens, fewer than {world_size} block(s) of "
                f"{block_size + 1}; use a bigger corpus or a smaller data.block_size"
            )
        self.n_tokens = n_tokens

    def num_blocks(self, epoch: int, n_tokens: int | None = None) -> int:
        n = self.n_tokens if n_tokens is None else n_tokens
        return (n - 1 - self._offset(epoch)) // self.block_size

    def _offset(self, epoch: int) -> int:
        if not self.shuffle or epoch == 0:
            return 0
        if epoch not in self._offsets:
            self._offsets[epoch] = int(torch.randint(self.block_size, (1,), generator=self._gen(epoch, salt=1)))
        return self._offsets[epoch]

    def _gen(self, epoch: int, salt: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 2 + salt)

    def epoch_order(self, epoch: int) -> np.ndarray:
        n = self.num_blocks(epoch)
        if not self.shuffle:
            return np.arange(n)
        return torch.randperm(n, generator=self._gen(epoch)).numpy()

    def rank_stream(self) -> Iterator[tuple[int, int]]:
        """(epoch, block id) in this rank's order, epochs chained."""
        epoch = 0
        while self.epochs is None or epoch < self.epochs:
            for block in self.epoch_order(epoch)[self.rank :: self.world_size]:
                yield epoch, int(block)
            epoch += 1

    def _batches_for_worker(self, worker: int, num_workers: int) -> Iterator[list[tuple[int, int]]]:
        stream = self.rank_stream()
        # Skip whole batches before `start_batch` (a resume) without reading tokens.
        for _ in range(self.start_batch * self.batch_size):
            next(stream, None)
        k = 0
        while True:
            batch = [item for _, item in zip(range(self.batch_size), stream)]
            if not batch:
                return
            if k % num_workers == worker:
                yield batch
            k += 1

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        tokens = np.memmap(self.token_file, dtype=self.dtype, mode="r")
        span = self.block_size + 1
        for batch in self._batches_for_worker(worker, num_workers):
            for epoch, block in batch:
                start = self._offset(epoch) + block * self.block_size
                chunk = torch.from_numpy(tokens[start : start + span].astype(np.int64))
                yield {"input_ids": chunk[:-1], "labels": chunk[1:]}
