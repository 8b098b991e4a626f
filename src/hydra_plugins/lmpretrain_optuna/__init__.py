"""A resumable Optuna sweeper: hydra-optuna-sweeper whose `n_trials` is the study's total.

Plain hydra-optuna-sweeper runs `n_trials` *more* trials on every invocation. Here, re-running the
same command against the same SQLite storage continues the study: trials an interrupted sweep left
RUNNING are marked FAIL (user attr `interrupted`, not counted), and only the trials still missing
from `n_trials` finished ones (complete or failed) are run. TPE conditions on every earlier trial.
One sweeper process per study: a second one would see the first one's trials as interrupted.

Lives in the `hydra_plugins` namespace because Hydra only instantiates sweepers from there.
optuna is imported inside the functions: Hydra imports this module on every run (its plugin scan),
and `import optuna` took 2-4 s of each `python -m lmpretrain.train` start-up, sweep or not.

The sweeper is the `optuna` extra (`pip install 'lmpretrain[optuna]'`), not a dependency: optuna 2.x
pulls scipy (which torchmetrics then imports on every run: +0.6 s and +68 MB here) and pins
SQLAlchemy 1.x. Without it, `hparams_search=optuna` ends with one line that says what to install.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # the `optuna` extra is not installed
    OptunaSweeper = None

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)


def close_interrupted_trials(study: optuna.Study) -> int:
    """Mark trials left RUNNING by a killed sweep as failed; return how many."""
    from optuna.trial import TrialState

    stale = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    for t in stale:
        study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)  # optuna 2.x: no public setter
        study.tell(t.number, state=TrialState.FAIL)
    return len(stale)


def finished_trials(study: optuna.Study) -> int:
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
    return sum(t.state in done and not t.user_attrs.get("interrupted") for t in study.get_trials(deepcopy=False))


if OptunaSweeper is None:
    from hydra.core.config_store import ConfigStore
    from hydra.plugins.sweeper import Sweeper

    from lmpretrain.errors import exit_missing_extra

    class ResumableOptunaSweeper(Sweeper):
        """Stands in for the sweeper when its package is missing: one line, exit status 2. The
        `hydra/sweeper/optuna` config (hparams_search=optuna's default) is registered for it, so the
        command gets this far instead of failing in Hydra's config composition with no fix named."""

        def __init__(self, *args, **kwargs):
            exit_missing_extra("hparams_search=optuna", "the Optuna sweeper (hydra-optuna-sweeper)", "optuna")

        def setup(self, *args, **kwargs) -> None:  # pragma: no cover - never constructed
            raise NotImplementedError

        def sweep(self, arguments: list[str]) -> None:  # pragma: no cover
            raise NotImplementedError

    ConfigStore.instance().store(group="hydra/sweeper", name="optuna", provider="lmpretrain",
                                 # not recursive: the preset's sampler names an optuna class
                                 node={"_target_": f"{__name__}.ResumableOptunaSweeper", "_recursive_": False})

else:

    class ResumableOptunaSweeper(OptunaSweeper):
        def sweep(self, arguments: list[str]) -> None:
            import optuna
            from optuna.trial import TrialState

            impl = self.sweeper
            if impl.storage and impl.study_name:
                try:
                    study = optuna.load_study(study_name=impl.study_name, storage=impl.storage)
                except KeyError:  # a new study
                    study = None
                if study is not None:
                    interrupted = close_interrupted_trials(study)
                    done = finished_trials(study)
                    log.info("Resuming study %s: %d trial(s) finished, %d interrupted", impl.study_name, done, interrupted)
                    impl.n_trials = max(0, impl.n_trials - done)
                    if impl.n_trials == 0:
                        log.info("Study %s already has its trials; best value %s", impl.study_name, study.best_value)
                        return None
            try:
                return super().sweep(arguments)
            except ValueError as e:  # optuna's best_trial, when no trial completed
                study = optuna.load_study(study_name=impl.study_name, storage=impl.storage) if impl.storage else None
                if study is None or study.get_trials(states=[TrialState.COMPLETE]):
                    raise
                raise RuntimeError(
                    f"every trial of study {impl.study_name!r} failed; each job's train.log under hydra.sweep.dir says why"
                ) from e
