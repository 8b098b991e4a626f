"""`WandbLogger`: Lightning's wandb logger, started in a background thread once training is under
way, so that neither the start-up nor the training waits for it.

`wandb.init` costs 1.5-5 s on these CPUs (importing wandb, starting its service process, and in
wandb 0.2x importing its launch package's pydantic models on every init), all of it before the first
optimizer step, because Lightning's logger starts the run when the hyperparameters are logged at fit
start. Here nothing starts then: the hyperparameters are kept, and the first metrics (after the first
`log_every_n_steps` optimizer steps) start `wandb.init` in a thread and return. Started at fit start
instead, that thread's imports shared the interpreter with the main thread's set-up and held the
first step back by ~0.6 s of a 6 s start-up on a 2-core machine. Calls made before the run is up
are kept in order and handed to it at the next log call once it is up (or at the end of fit).
Anything that uses the run object itself (an attribute of `.experiment`, the end of fit, a resumed
run's id) starts it if need be and waits for it, so nothing is lost, and an error from `wandb.init`
is raised there, in the main thread. Reading `.experiment` alone does not wait: Lightning's setup
hook reads it before the first step only to make sure the run exists.

The run id is chosen here when none is given (a resumed run passes its own), so `version` - which
`KeepWandbRunId` stores in every checkpoint - is known at once, without waiting for the run.
`background=false` starts wandb the way Lightning does.
"""

from __future__ import annotations

import secrets
import string
import threading
from collections.abc import Mapping
from typing import Any

from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_only


def new_run_id() -> str:
    """8 characters of [a-z0-9], the form of wandb's own run ids."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


class _StartingRun:
    """`.experiment` while `wandb.init` is still running in the background: any attribute of it
    waits for the run and comes from it."""

    def __init__(self, logger: WandbLogger):
        self._logger = logger

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger.started_run(), name)

    def __repr__(self) -> str:
        return f"<wandb run {self._logger.version}, starting>"


class WandbLogger(LightningWandbLogger):
    def __init__(self, *args: Any, background: bool = True, **kwargs: Any):
        if not kwargs.get("id") and not kwargs.get("version"):
            kwargs["id"] = new_run_id()
        super().__init__(*args, **kwargs)
        self._background = background
        self._starting: threading.Thread | None = None
        self._start_error: BaseException | None = None
        self._pending: list[tuple[str, tuple]] = []  # calls made while the run was starting, in order
        self._wanted = False  # a run is due (hyperparameters logged) and not started yet: the first metrics start it

    # ------------------------------------------------------------- starting the run in the background

    def _start_in_background(self) -> None:
        def start() -> None:
            try:
                LightningWandbLogger.experiment.fget(self)  # wandb.init, then Lightning's define_metric
            except BaseException as e:  # noqa: BLE001 - re-raised in the main thread by _ready()
                self._start_error = e

        self._starting = threading.Thread(target=start, name="wandb-init", daemon=True)
        self._starting.start()

    def _start_if_due(self) -> None:
        if self._wanted:
            self._wanted = False
            self._start_in_background()

    def _ready(self, wait: bool) -> bool:
        """Whether the run is up (waiting for it when `wait`); replays the calls kept meanwhile."""
        if self._starting is not None:
            if wait:
                self._starting.join()
            elif self._starting.is_alive():
                return False
            self._starting = None
            if self._start_error is not None:
                error, self._start_error, self._pending = self._start_error, None, []
                raise error
        # Taken at once: a replayed call reads .experiment, which comes back here and must find none left.
        pending, self._pending = self._pending, []
        for what, args in pending:
            getattr(super(), what)(*args)
        return True

    def started_run(self):
        """The wandb run if one was started or is due (starting it, and waiting for it to be up), else None."""
        self._start_if_due()
        if self._starting is None and self._experiment is None:
            return None
        self._ready(wait=True)
        return self.experiment

    @property
    def experiment(self):
        # sync_tensorboard: wandb must be up before any TensorBoard writer exists (Lightning's setup hook)
        starting = self._wanted or (self._starting is not None and self._starting.is_alive())
        if starting and not self._wandb_init.get("sync_tensorboard"):
            return _StartingRun(self)
        self._start_if_due()
        self._ready(wait=True)
        return super().experiment

    def __getstate__(self) -> dict[str, Any]:
        self._start_if_due()
        self._ready(wait=True)
        state = super().__getstate__()
        state.update(_starting=None, _start_error=None, _pending=[])  # a thread cannot be pickled
        return state

    # ------------------------------------------------------------- what may go before the run is up

    @rank_zero_only
    def log_hyperparams(self, params) -> None:
        if self._background and self._experiment is None and self._starting is None:
            self._wanted = True  # started by the first metrics (module docstring)
        if not self._wanted and self._ready(wait=False):
            super().log_hyperparams(params)
        else:
            self._pending.append(("log_hyperparams", (params,)))

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        self._start_if_due()
        if self._ready(wait=False):
            super().log_metrics(metrics, step)
        else:
            self._pending.append(("log_metrics", (dict(metrics), step)))

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self._start_if_due()
        self._ready(wait=True)  # the run up and everything kept for it handed over (nothing to do if so)
        super().finalize(status)
