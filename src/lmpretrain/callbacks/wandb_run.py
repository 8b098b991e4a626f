"""`KeepWandbRunId`: the wandb run id goes into every checkpoint (`checkpoint["wandb_run_id"]`), so a run
resumed from it (`ckpt_path=...`) logs into the same wandb run: `lmpretrain.run` passes the id back to
the WandbLogger with `resume="allow"`. Added by `run.build_trainer` whenever a wandb logger is configured."""

from __future__ import annotations

import lightning as L

KEY = "wandb_run_id"


def wandb_run_id(trainer: L.Trainer) -> str | None:
    for lg in trainer.loggers:
        if type(lg).__name__ == "WandbLogger":
            return lg.version  # the run's id (started on first use)
    return None


class KeepWandbRunId(L.Callback):
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if (run_id := wandb_run_id(trainer)) is not None:
            checkpoint[KEY] = run_id
