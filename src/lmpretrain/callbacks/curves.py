"""Write a run's training curves into its folder when it ends: `curves.json` (every logged scalar
by step) and `curves.png` (loss, perplexity, learning rate, tokens/s, gradient norm, task scores),
whatever loggers are on. `python -m lmpretrain.plot` overlays several runs from the same files."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import lightning as L

from lmpretrain.atomic import atomic_write_json
from lmpretrain.plot import CURVES_FILE, plot_runs

log = logging.getLogger(__name__)


class TrainingCurves(L.Callback):
    def __init__(self, output_dir: str, filename: str = "curves.png"):
        self.output_dir = Path(output_dir)
        self.filename = filename
        self.curves: dict[str, list[tuple[int, float]]] = {}

    def _record(self, trainer: L.Trainer, prefixes: tuple[str, ...]) -> None:
        step = trainer.global_step
        for key, value in trainer.logged_metrics.items():
            if not key.startswith(prefixes):
                continue
            value = float(value)
            points = self.curves.setdefault(key, [])
            if math.isfinite(value) and (not points or points[-1][0] != step):
                points.append((step, value))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer._logger_connector.should_update_logs:
            self._record(trainer, ("train/",))
            if trainer.optimizers:  # LearningRateMonitor writes to the loggers only; read the optimizer
                lr = self.curves.setdefault("lr", [])
                if not lr or lr[-1][0] != trainer.global_step:
                    lr.append((trainer.global_step, float(trainer.optimizers[0].param_groups[0]["lr"])))

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._record(trainer, ("val/",))

    def on_fit_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or not self.curves:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.output_dir / CURVES_FILE, self.curves)
        try:
            plot_runs([("run", self.curves)], self.output_dir / self.filename)
        except ValueError:  # nothing plottable
            return
        log.info("curves: %s", self.output_dir / self.filename)
