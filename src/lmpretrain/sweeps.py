"""Names for the runs of a sweep, as `${run_name:}` / `${run_group:}` resolvers for the loggers.

A single run is named and grouped by `name`. In a multirun (`-m` grid or `hparams_search`),
every run is its own wandb run named from its overrides (`train:optimizer.lr=0.003,model=gpt_small`)
and all runs of one sweep share a group named after the sweep (`train/2026-01-31_12-00-00`), so
wandb shows them side by side.

`SweepReport` (a Hydra callback, conf/hydra/default.yaml): a job that fails does not stop the sweep
(Hydra runs the other jobs, then exits non-zero); each failure is one `error: sweep job #N (overrides)
failed: ...` line on stderr as it happens, so every failed job is named, not only the first.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from lmpretrain.errors import LMPretrainError

# Overrides that choose *how* to sweep or log, not what a run is: left out of run names.
NOT_IN_NAME = ("hydra.", "hydra/", "hparams_search", "logger", "debug", "paths.", "ckpt_path")


def _multirun():
    hc = HydraConfig.get() if HydraConfig.initialized() else None
    return hc if hc is not None and hc.mode == RunMode.MULTIRUN else None


def run_name(name: str) -> str:
    hc = _multirun()
    if hc is None:
        return name
    overrides = [o for o in hc.overrides.task if not o.lstrip("+~").startswith(NOT_IN_NAME)]
    return f"{name}:{','.join(overrides)}" if overrides else f"{name}:{hc.job.num}"


def run_group(name: str) -> str:
    hc = _multirun()
    if hc is None:
        return name
    sweep_dir = Path(hc.sweep.dir)
    return f"{name}/{sweep_dir.parent.name}_{sweep_dir.name}"


class SweepReport(Callback):
    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs) -> None:
        if job_return.status != JobStatus.FAILED or _multirun() is None:
            return
        error = job_return._return_value  # the `return_value` property re-raises it
        what = str(error) if isinstance(error, LMPretrainError) else f"{type(error).__name__}: {error}"
        overrides = " ".join(config.hydra.overrides.task)
        print(f"error: sweep job #{config.hydra.job.num} ({overrides}) failed: {what}", file=sys.stderr, flush=True)


def register_resolvers() -> None:
    for name, fn in {"run_name": run_name, "run_group": run_group}.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()
