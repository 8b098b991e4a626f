"""The streaming core every DataModule shares: which data-parallel rank and DataLoader worker owns
which example, the stream position saved in checkpoints, and the rank-aware loaders.

Ownership is one rule, a pure function of the example's position in the stream, so no example is
duplicated or dropped across ranks x workers and a resumed run sees exactly the batches the
uninterrupted run would have seen:

    rank r of R      : items r, r + R, r + 2R, ... of the global stream (`take_rank`)
    batch k of rank r: that rank's items [k*B, (k+1)*B)
    worker w of W    : batches start + w, start + w + W, ... (the DataLoader reads its workers
                       round-robin, so the rank sees its batches in order)
    start            : training batches already consumed (`StreamingDataModule.state_dict`)
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from lmpretrain.errors import ConfigError


def take_rank(items: Iterable, rank: int, world_size: int) -> Iterator:
    """Items rank, rank + world_size, ... of `items`: this rank's share of a global stream."""
    return itertools.islice(items, rank, None, world_size)


class ShardedStream(IterableDataset):
    """A rank's example stream, split over DataLoader workers by batch and resumable by batch.

    Subclasses give `rank_stream()` (this rank's items in order; infinite for training) and
    `example(position, item)` (the item turned into a training example; `position` is the item's
    index in the rank's stream, a stable key for any per-example randomness).
    """

    def __init__(self, batch_size: int, start_batch: int = 0, rank: int = 0, world_size: int = 1):
        self.batch_size, self.start_batch, self.rank, self.world_size = batch_size, start_batch, rank, world_size

    def rank_stream(self) -> Iterator:
        raise NotImplementedError

    def example(self, position: int, item):
        return item

    def __iter__(self) -> Iterator:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for position, item in enumerate(self.rank_stream()):
            batch = position // self.batch_size
            if batch >= self.start_batch and (batch - self.start_batch) % workers == worker:
                yield self.example(position, item)


class StreamingDataModule(L.LightningDataModule):
    """Subclasses give `dataset(part)` -> a `ShardedStream` for this rank (built with
    `stream_args(part)`), `tokenizer`, `vocab_size` and `prepare_data`.

    The number of training batches consumed is checkpointed (`state_dict`), so a resumed run's
    stream starts at exactly the next batch the uninterrupted run would have drawn.
    """

    collate_fn = None  # DataLoader collate; None = stack equal-length samples
    splits: tuple[str, ...] = ("train", "val")
    # Whether `connect(tokenizer=...)` may replace the tokenizer this module would train itself
    # (fine-tuning a pretrained checkpoint must read text exactly as it was pretrained).
    takes_tokenizer = False

    def __init__(self, block_size: int | None, batch_size: int, num_workers: int, seed: int,
                 eval_batch_size: int | None = None):
        super().__init__()
        self.block_size, self.batch_size, self.num_workers, self.seed = block_size, batch_size, num_workers, seed
        # Batch size of the validation/test loaders; None = batch_size. Evaluation keeps no activations
        # for a backward pass, so a larger batch costs little memory and makes a whole-split
        # evaluation several times cheaper than at the training batch (12 in nanoGPT's CPU run).
        self.eval_batch_size = eval_batch_size
        self.tokenizer = None
        self.train_batches_seen = 0

    def connect(self, tokenizer=None, block_size: int | None = None) -> None:
        """Run-time values from `lmpretrain.run`: a tokenizer to use instead of training one (a
        pretrained checkpoint's), and the model's block size, which fills `block_size` when the
        config left it null."""
        if tokenizer is not None:
            if not self.takes_tokenizer:
                raise ConfigError(f"{type(self).__name__} trains its own tokenizer and cannot take a checkpoint's; "
                                  f"use a data config that accepts one (e.g. a task preset)")
            self.tokenizer = tokenizer
        if self.block_size is None:
            self.block_size = block_size

    def module_arguments(self) -> dict:
        """Constructor arguments the data decides for the LightningModule (e.g. the labels found)."""
        return {}

    def has_split(self, part: str) -> bool:
        return part in self.splits

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()

    @property
    def vocab_size(self) -> int:
        self.prepare_data()
        return self.tokenizer.get_vocab_size()

    def rank_and_world(self) -> tuple[int, int]:
        """(data-parallel rank, data-parallel size): the strategy's own split, so that the processes of
        one tensor-parallel group read the same batches; plain global rank/world otherwise."""
        from lmpretrain.distributed import data_parallel_rank_and_size

        return data_parallel_rank_and_size(self.trainer)

    def stream_args(self, part: str) -> dict:
        """The `ShardedStream` arguments of `part` for this rank; training resumes where the
        checkpoint left off."""
        rank, world = self.rank_and_world()
        start = self.train_batches_seen if part == "train" else 0
        return {"batch_size": self.batch_size_of(part), "start_batch": start, "rank": rank, "world_size": world}

    def batch_size_of(self, part: str) -> int:
        return self.batch_size if part == "train" or not self.eval_batch_size else self.eval_batch_size

    def dataset(self, part: str) -> ShardedStream:
        raise NotImplementedError

    def _loader(self, part: str) -> DataLoader:
        return DataLoader(
            self.dataset(part),
            batch_size=self.batch_size_of(part),
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        if not self.has_split("test"):
            raise ConfigError("this data has no test split; add data.files.test=<file> to evaluate on one")
        return self._loader("test")

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        if self.trainer is not None and self.trainer.training:
            self.train_batches_seen += 1
        return batch

    def state_dict(self) -> dict:
        return {"train_batches_seen": self.train_batches_seen}

    def load_state_dict(self, state_dict: dict) -> None:
        self.train_batches_seen = int(state_dict["train_batches_seen"])
