"""The `evaluate` suite during pretraining: every `every_n_steps` optimizer steps the current
weights are saved to `<run>/eval/step<N>.ckpt` and scored on the suite (held-out text, brief task
fine-tunings) exactly as `python -m lmpretrain.evaluate` would, logged as `eval/<score>` to every
logger (CSV, wandb). The random state of the pretraining run is restored afterwards, so enabling
the callback does not change the pretraining run.
"""

from __future__ import annotations

import random
from pathlib import Path

import lightning as L
import numpy as np
import torch


class EvaluationSuite(L.Callback):
    def __init__(self, suite: dict, every_n_steps: int = 0, output_dir: str = ".", cache_dir: str | None = None,
                 data_dir: str | None = None):
        self.suite, self.every_n_steps = dict(suite or {}), int(every_n_steps)
        self.output_dir, self.cache_dir, self.data_dir = Path(output_dir), cache_dir, data_dir
        self._last_step = -1

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps <= 0 or step == 0 or step % self.every_n_steps or step == self._last_step:
            return  # (several batches end at one step under gradient accumulation)
        self._last_step = step
        path = self.output_dir / "eval" / f"step{step:06d}.ckpt"
        trainer.save_checkpoint(path)  # all ranks take part; rank 0 writes
        if trainer.is_global_zero:
            from lmpretrain.evaluate import score_checkpoint
            from lmpretrain.paths import cache_root, data_root

            states = (torch.get_rng_state(), np.random.get_state(), random.getstate())
            try:
                scores = score_checkpoint(str(path), self.suite, self.output_dir / "eval" / f"step{step:06d}",
                                          self.cache_dir or str(cache_root()), self.data_dir or str(data_root()))
            finally:
                torch.set_rng_state(states[0])
                np.random.set_state(states[1])
                random.setstate(states[2])
            for logger in trainer.loggers:
                logger.log_metrics({f"eval/{k}": v for k, v in scores.items()}, step=step)
        trainer.strategy.barrier()
