"""What the streaming DataModules share: rank-aware loaders and the resumable stream position."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader

from lmpretrain.data.packed_blocks import PackedBlocks


class StreamingDataModule(L.LightningDataModule):
    """Subclasses give `sources(part)` -> list of sources (each a list of token files), `dtype`, and
    optionally `weights`; or override `dataset(part)` for another kind of stream.

    The number of training batches consumed is checkpointed (`state_dict`), so a resumed run's
    stream starts at exactly the next batch the uninterrupted run would have drawn.
    """

    weights: list[float] | None = None
    collate_fn = None  # DataLoader collate; None = stack equal-length samples

    def __init__(self, block_size: int, batch_size: int, num_workers: int, seed: int):
        super().__init__()
        self.block_size, self.batch_size, self.num_workers, self.seed = block_size, batch_size, num_workers, seed
        self.train_batches_seen = 0

    def sources(self, part: str) -> list[list[str]]:
        raise NotImplementedError

    def rank_and_world(self) -> tuple[int, int]:
        """(data-parallel rank, data-parallel size): the strategy's own split, so that the processes of
        one tensor-parallel group read the same batches; plain global rank/world otherwise."""
        from lmpretrain.distributed import data_parallel_rank_and_size

        return data_parallel_rank_and_size(self.trainer)

    def dataset(self, part: str):
        """The stream of `part` for this rank, resuming training where the checkpoint left off."""
        rank, world = self.rank_and_world()
        train = part == "train"
        return PackedBlocks(
            self.sources(part),
            self.dtype.name,
            self.block_size,
            self.batch_size,
            weights=self.weights if train else None,
            shuffle=train,
            seed=self.seed,
            start_batch=self.train_batches_seen if train else 0,
            rank=rank,
            world_size=world,
        )

    def _loader(self, part: str) -> DataLoader:
        return DataLoader(
            self.dataset(part),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        if self.trainer is not None and self.trainer.training:
            self.train_batches_seen += 1
        return batch

    def state_dict(self) -> dict:
        return {"train_batches_seen": self.train_batches_seen}

    def load_state_dict(self, state_dict: dict) -> None:
        self.train_batches_seen = int(state_dict["train_batches_seen"])
