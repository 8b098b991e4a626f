"""Preemption: a scheduler's notice (SIGTERM from SLURM/Kubernetes before the kill, SIGUSR1 from
`sbatch --signal=USR1@90`) ends the run cleanly instead of losing the steps since the last save.

On the signal the optimizer step in progress (all its accumulated micro-batches) finishes, then
`last.ckpt` is saved in the checkpoint folder and the run stops with `Preempted`: one `error:` line
and exit status 128 + signal (143 for SIGTERM). `ckpt_path=last` resumes it with the same losses as
an uninterrupted run.

Under SLURM (`SLURM_JOB_ID` set; `requeue: auto`), after SIGUSR1 rank 0 then requeues the job with
`scontrol requeue` (not after SIGTERM, which is also how `scancel` ends a job); a job script run
with `ckpt_path=auto` resumes from the newest last.ckpt of the run's name when it starts again, and
starts fresh the first time.

Lightning's own SIGTERM handling (replaced here while training) stops after any micro-batch, saves
nothing and exits 0, so a preempted job looked finished.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from lmpretrain.errors import Preempted


def last_checkpoint_path(trainer: L.Trainer) -> Path:
    """Where the run's `last.ckpt` lives: the ModelCheckpoint folder, else <default_root_dir>/checkpoints."""
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.dirpath:
            return Path(cb.dirpath) / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}"
    return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"


def requeue_slurm_job() -> str:
    """`scontrol requeue` this SLURM job (array task included); returns what happened, for the message."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID')}" if array else os.environ["SLURM_JOB_ID"]
    try:
        r = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"requeueing SLURM job {job} failed ({e}); resubmit it"
    if r.returncode:
        return f"requeueing SLURM job {job} failed ({(r.stderr or r.stdout).strip()}); resubmit it"
    return f"requeued SLURM job {job}"


class Preemption(L.Callback):
    """Save last.ckpt at the next optimizer-step boundary after one of `signals`, then stop.
    `requeue` (after SIGUSR1): auto (under SLURM), true or false."""

    def __init__(self, signals: list[str] = ("SIGTERM", "SIGUSR1"), requeue: bool | str = "auto"):
        self.signals = [signal.Signals[s] if isinstance(s, str) else signal.Signals(s) for s in signals]
        self.requeue = "SLURM_JOB_ID" in os.environ if requeue == "auto" else bool(requeue)
        self.received: int | None = None
        self._previous: dict[int, object] = {}
        self._trainer: L.Trainer | None = None
        self._step_at_batch_start = -1

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.received = signum
            launcher = self._trainer.strategy.launcher if self._trainer is not None else None
            if launcher is not None:  # processes this one started (ddp): pass the notice on
                launcher.kill(signum)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After Lightning installed its handlers (at fit start), so ours replace its SIGTERM one.
        if threading.current_thread() is not threading.main_thread():
            return
        self._trainer, self.received = trainer, None
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous, self._trainer = {}, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._step_at_batch_start:
            return  # inside an accumulation: the optimizer step is not done yet
        stop = self.received is not None
        if trainer.world_size > 1:  # every rank stops at the same step, whichever got the signal
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        path = last_checkpoint_path(trainer)
        trainer.save_checkpoint(path)  # the whole checkpoint (optimizer, loops, data position): what a resume needs
        name = signal.Signals(self.received or signal.SIGTERM).name
        # Only the notice signal: SIGTERM is also how `scancel` ends a job, which must stay cancelled.
        requeue = self.requeue and self.received == signal.SIGUSR1 and trainer.is_global_zero
        requeued = f"; {requeue_slurm_job()}" if requeue else ""
        raise Preempted(f"preempted by {name} at step {trainer.global_step}: saved {path}{requeued}; resume with "
                        f"ckpt_path=last (or ckpt_path={path})", self.received or signal.SIGTERM)
