"""`train/tokens_per_sec`: tokens consumed by the optimizer per wall-clock second, all ranks.

Validation time is excluded (the window restarts after each validation run), so the figure is
the training step's own throughput.
"""

from __future__ import annotations

import time

import lightning as L


class TokenThroughput(L.Callback):
    def __init__(self, window: int | None = None):
        self.window = window  # batches per measurement; default: trainer.log_every_n_steps
        self._start: float | None = None
        self._tokens = 0
        self._batches = 0

    def _reset(self) -> None:
        self._start, self._tokens, self._batches = None, 0, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._start is None:
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._tokens += batch["input_ids"].numel() * trainer.world_size
        self._batches += 1
        if self._batches >= (self.window or trainer.log_every_n_steps):
            elapsed = time.perf_counter() - self._start
            pl_module.log("train/tokens_per_sec", self._tokens / elapsed)
            self._reset()

    def on_validation_start(self, trainer, pl_module) -> None:
        self._reset()
