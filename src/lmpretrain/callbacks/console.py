"""What a run prints: a progress bar in steps, a model summary without empty columns, and none of
the third-party tips and deprecation notices that bury the lines a user needs.

- `StepProgressBar`: "step 120/1000" (optimizer steps; Lightning's default says "Epoch 0/-2" for a
  run bounded by max_steps), the loss, tokens/s and the time left; no `v_num`.
- `ParamSummary`: Lightning's rich model summary without the FLOPs column and "Total FLOPs: 0"
  (Lightning counts FLOPs only with an `example_input_array`; the throughput callback counts them).
- `quiet_third_party()`: drops Lightning's product tips and `Trainer(x=1) was configured so ...`
  notices, known deprecation warnings from inside our dependencies, and wandb's own chatter
  (`close_wandb_runs` prints the one line that matters: where the offline run is and how to sync).
"""

from __future__ import annotations

import logging
import os
import re
import time
import warnings

from lightning.pytorch.callbacks import RichModelSummary, RichProgressBar

# Messages of third parties that tell the user nothing about their run.
_DROPPED_INFO = re.compile(r"💡 Tip:|`Trainer\(\w+=1(\.0)?\)` was configured so|"
                           r"Trainer already configured with model summary callbacks")
_DROPPED_WARNINGS = [
    r".*isinstance\(treespec, LeafSpec\).*",  # lightning's _pytree on torch >= 2.9: not ours to fix
    r".*The anonymous setting has no effect.*",
    # bf16-mixed on a GPU: Lightning's summary would size the model in 32 bits anyway; ours says "MB in fp32"
    r".*is not supported by the model summary.*",
    # every module of ours builds its network in configure_model; build_trainer refuses callbacks=ema
    # with the one strategy that shards it (FSDP2), so the warning would only ever be noise
    r".*WeightAveraging doesn't support sharding.*",
]


class _DropInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _DROPPED_INFO.search(record.getMessage())


_FILTER = _DropInfo()


def quiet_third_party() -> None:
    """Idempotent; called before a Trainer is built. WANDB_SILENT=false brings wandb's output back."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    for pattern in _DROPPED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    os.environ.setdefault("WANDB_SILENT", "true")


class StepProgressBar(RichProgressBar):
    """The training bar counts optimizer steps against max_steps (or epochs when the run is bounded
    by max_epochs) and shows loss, tokens/s and the time left."""

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        if trainer.max_steps and trainer.max_steps > 0:
            text = f"step {trainer.global_step}/{trainer.max_steps}"
        elif trainer.max_epochs is not None and trainer.max_epochs > 0:
            text = f"epoch {current_epoch + 1}/{trainer.max_epochs}"
        else:
            text = f"step {trainer.global_step}"
        return f"{text:{len(self.validation_description)}}"

    # Redraw at most this often: Lightning redraws after every batch, ~1 ms of Python per step (2% of
    # a 50 ms CPU step) for a bar nobody reads 20 times a second. The last state is always drawn.
    min_redraw_s = 0.2

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._drawn_at = -float("inf")
        self._undrawn: int | None = None  # batch_idx of a batch end not drawn yet

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        last = 0 < trainer.max_steps <= trainer.global_step
        if (self.train_progress_bar_id is not None and not last
                and time.monotonic() - self._drawn_at < self.min_redraw_s):
            self._undrawn = batch_idx
            return
        self._draw(trainer, pl_module, batch_idx)

    def _draw(self, trainer, pl_module, batch_idx: int) -> None:
        self._drawn_at, self._undrawn = time.monotonic(), None
        super().on_train_batch_end(trainer, pl_module, None, None, batch_idx)
        if self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id,
                                 description=self._get_train_description(trainer.current_epoch))

    def _draw_undrawn(self, trainer, pl_module) -> None:
        if self._undrawn is not None:
            self._draw(trainer, pl_module, self._undrawn)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._draw_undrawn(trainer, pl_module)
        super().on_train_epoch_end(trainer, pl_module)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._draw_undrawn(trainer, pl_module)  # the bar shows where training paused
        super().on_validation_start(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._draw_undrawn(trainer, pl_module)
        super().on_train_end(trainer, pl_module)

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        tokens_per_sec = trainer.callback_metrics.get("train/tokens_per_sec")
        if tokens_per_sec is not None:
            metrics["tokens/s"] = f"{float(tokens_per_sec):,.0f}"
        return metrics


class ParamSummary(RichModelSummary):
    """Lightning's rich summary (name, type, parameters, mode) without the FLOPs figures."""

    @staticmethod
    def summarize(summary_data, total_parameters, trainable_parameters, model_size, total_training_modes,
                  total_flops, **summarize_kwargs) -> None:
        from rich import get_console
        from rich.table import Table

        data = [(name, values) for name, values in summary_data if name != "FLOPs"]
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        for name, _ in data:  # the first column (" ") is the layer's index
            table.add_column(name, style="dim" if name == " " else None,
                             justify="right" if name.startswith(("Params", "In ", "Out ")) else "left")
        for row in zip(*(values for _, values in data)):
            table.add_row(*row)
        console = get_console()
        console.print(table)
        frozen = total_parameters - trainable_parameters
        console.print(f"[bold]Parameters[/]: {total_parameters:,} ({trainable_parameters:,} trainable, "
                      f"{frozen:,} frozen), {model_size:.1f} MB in fp32")
