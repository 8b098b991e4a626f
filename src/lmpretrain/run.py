"""One road from a composed config to a finished run, shared by `train` and `finetune`:

    config -> trainer settings -> data (+ tokenizer) -> model config -> LightningModule -> Trainer
           -> fit (-> test) -> metrics

`build_run` checks what can be checked before anything heavy starts (trainer settings, model vs
data), then hands every runtime value over once: the tokenizer and the model's block size reach the
DataModule through `datamodule.connect(...)`; the tokenizer and runtime options reach the
LightningModule through `module.connect(...)`; everything else is a constructor argument.
The entrypoints (`train.py`, `finetune.py`) are thin `@hydra.main` wrappers around `fit_run`.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint, WeightAveraging
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict
from tokenizers import Tokenizer

from lmpretrain import startup
from lmpretrain.atomic import remove_orphans
from lmpretrain.callbacks.console import quiet_third_party
from lmpretrain.callbacks.wandb_run import KEY as WANDB_RUN_ID
from lmpretrain.callbacks.wandb_run import KeepWandbRunId
from lmpretrain.checkpoints import AtomicCheckpointIO, check_resume_fits, read_checkpoint, resolve_ckpt_path
from lmpretrain.config import check_model_fits_data, to_dict, wandb_offline_unless_configured
from lmpretrain.distributed import resolve_trainer_config, resolve_unused_parameters, strategy_name
from lmpretrain.errors import (
    ConfigError,
    Preempted,
    exit_on_user_error,
    find_user_error,
    missing_values_error,
)
from lmpretrain.loggers import WandbLogger
from lmpretrain.module import LMModule, RuntimeOptions, use_matmul_precision
from lmpretrain.optim import check_optimizer_config
from lmpretrain.optim.freeze import freeze_parameters
from lmpretrain.paths import unwritable
from lmpretrain.tasks.base import read_pretrained

log = logging.getLogger(__name__)


class Run(NamedTuple):
    datamodule: L.LightningDataModule
    module: LMModule
    trainer: L.Trainer


def build_run(cfg: DictConfig, module_group: str) -> Run:
    """DataModule, LightningModule (built from `cfg[module_group]`: `objective` for pretraining,
    `task` for fine-tuning) and Trainer from a composed config, without training.

    With `cfg.pretrained` (a checkpoint path), the network config, its weights and the tokenizer
    come from that checkpoint; otherwise from the `model` and `tokenizer` groups. `cfg.ckpt_path`
    (`last`: the newest last.ckpt of the run's folder or logs/<name>; `auto`: that or none; written
    back into cfg) must be
    a training checkpoint of this very network; that and the trainer/optimizer values are checked
    before anything is built. Both given: the run resumes from `ckpt_path` (weights, optimizer,
    step, data position: an interrupted run that began from `pretrained`), which must fit the
    network `pretrained` describes. `cfg.freeze` ({embeddings, layers}) fixes parts of the network.
    """
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    trainer_cfg = check_all(lambda: resolve_trainer_config(cfg),  # precision=auto, global batch -> accumulation
                            lambda: check_optimizer_config(to_dict(cfg.optimizer)))[0]
    resume = None
    if cfg.get("ckpt_path"):  # `last`/`auto` -> the newest last.ckpt; a file that cannot resume fails here
        runs = Path(cfg.paths.log_dir) / str(cfg.get("name", ""))
        path = resolve_ckpt_path(cfg.ckpt_path, Path(cfg.paths.output_dir), runs)
        with open_dict(cfg):
            cfg.ckpt_path = str(path) if path else None
    if cfg.get("ckpt_path"):
        sharded = Path(cfg.ckpt_path).is_dir() and strategy_name(trainer_cfg.strategy) == "FSDP2Strategy"
        resume = None if sharded else read_checkpoint(cfg.ckpt_path, "ckpt_path", mmap=True)
    pretrained = read_pretrained(cfg.pretrained) if cfg.get("pretrained") else None
    model = pretrained["model"] if pretrained else to_dict(cfg.model)
    if pretrained:  # `${model.arch}` and the like in other groups (seq2seq data.layout) mean the checkpoint's
        with open_dict(cfg):
            cfg.model = model
    datamodule = instantiate(cfg.data)
    datamodule.connect(tokenizer=Tokenizer.from_str(pretrained["tokenizer_json"]) if pretrained else None,
                       block_size=model.get("block_size"))
    datamodule.prepare_data()  # trains/loads the tokenizer: the model's vocabulary comes from it
    model = check_model_fits_data(model, datamodule.block_size, datamodule.vocab_size)
    with pretrained_context(cfg, model, module_group):  # a checkpoint of another family fails in the constructor or the load
        module = instantiate(cfg[module_group], model=model, optimizer=to_dict(cfg.optimizer),
                             scheduler=to_dict(cfg.scheduler), **datamodule.module_arguments(), _convert_="all")
        if pretrained:
            module.load_pretrained_network(pretrained["network"])
    if frozen := freeze_parameters(module.network, **to_dict(cfg.get("freeze"))):
        log.info("froze %d parameter tensors (%s ...)", len(frozen), ", ".join(frozen[:3]))
    module.connect(tokenizer_json=datamodule.tokenizer.to_str(), runtime=RuntimeOptions(**to_dict(cfg.get("runtime"))))
    wandb_run_id = None
    if resume is not None:
        check_resume_fits(resume, module, cfg.ckpt_path)
        wandb_run_id = resume.get(WANDB_RUN_ID)
        del resume
    resolve_unused_parameters(trainer_cfg, module)
    trainer = build_trainer(cfg, trainer_cfg, wandb_run_id)
    use_matmul_precision(trainer.accelerator, module.runtime)  # before fit, whose device setup checks it
    return Run(datamodule, module, trainer)


@contextmanager
def pretrained_context(cfg: DictConfig, model: dict, module_group: str):
    """Say which checkpoint a user error while building the module came from (pretrained= only)."""
    try:
        yield
    except Exception as e:
        if not cfg.get("pretrained") or (user_error := find_user_error(e)) is None:
            raise
        raise ConfigError(f"pretrained={cfg.pretrained} holds a {model.get('arch', '?')} network that this "
                          f"{module_group} cannot take: {user_error}") from None


def check_all(*checks: Callable):
    """Run every check and raise one ConfigError listing all their problems; else their results."""
    results, problems = [], []
    for check in checks:
        try:
            results.append(check())
        except ConfigError as e:
            problems.append(str(e))
    if problems:
        raise ConfigError("; ".join(problems))
    return results


def build_trainer(cfg: DictConfig, trainer_cfg: DictConfig, wandb_run_id: str | None = None) -> L.Trainer:
    """The Trainer with the config's callbacks and loggers (wandb offline unless configured), saving
    checkpoints crash-proof (AtomicCheckpointIO); temp files of killed saves are removed first.
    `wandb_run_id` (kept in the checkpoint being resumed): the wandb logger continues that run."""
    quiet_third_party()
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    strategy = strategy_name(trainer_cfg.get("strategy") or "auto")
    if strategy == "FSDP2Strategy" and any(isinstance(cb, WeightAveraging) for cb in callbacks):
        raise ConfigError("callbacks=ema keeps an unsharded copy of every weight, which strategy=fsdp cannot "
                          "average; use strategy=ddp, or drop the weight averaging callback")
    for cb in callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.dirpath:
            # Else the first save fails, after training. Not created here: a run that saves nothing
            # (trainer.max_steps=0) leaves no empty checkpoints folder behind.
            if (why := unwritable(cb.dirpath, create=False)) is not None:
                raise ConfigError(f"checkpoint folder {cb.dirpath} cannot be written ({why}); set "
                                  f"callbacks.model_checkpoint.dirpath= or hydra.run.dir= to a writable folder")
            for orphan in remove_orphans(Path(cb.dirpath)):
                log.info("removed %s, left by a save that was killed", orphan)
    logger_cfgs = [c for c in (cfg.get("logger") or {}).values() if c is not None]
    is_wandb = ["wandb" in str(c.get("_target_", "")).lower() for c in logger_cfgs]
    if any(is_wandb):
        wandb_offline_unless_configured()
        callbacks.append(KeepWandbRunId())
    check_logger_packages(logger_cfgs)
    configured_tags = [t for c, w in zip(logger_cfgs, is_wandb) if w for t in (c.get("tags") or [])]
    wandb_extra = {"tags": sorted({*configured_tags, *run_tags(cfg, trainer_cfg)})}
    if wandb_run_id:
        wandb_extra.update(id=wandb_run_id, resume="allow")
    loggers = [instantiate(c, **(wandb_extra if w else {})) for c, w in zip(logger_cfgs, is_wandb)]
    for lg, w in zip(loggers, is_wandb):
        if w:  # Lightning passes anonymous=None, which wandb >= 0.19 warns about on every run
            lg._wandb_init.pop("anonymous", None)
    return instantiate(trainer_cfg, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()])


def run_tags(cfg: DictConfig, trainer_cfg: DictConfig) -> list[str]:
    """wandb tags that tell runs apart in a dashboard: objective (or task), model, strategy, precision."""
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    what = choices.get("objective") or choices.get("task")
    model = "pretrained" if cfg.get("pretrained") else choices.get("model")
    strategy = strategy_name(trainer_cfg.get("strategy")) if trainer_cfg.get("strategy") else "auto"
    tags = {"objective": what, "model": model, "strategy": strategy, "precision": trainer_cfg.get("precision")}
    return [f"{k}:{v}"[:64] for k, v in tags.items() if v]


def check_logger_packages(logger_cfgs: list) -> None:
    import importlib.util

    wants_tb = any("TensorBoard" in str(c.get("_target_", "")) for c in logger_cfgs)
    if wants_tb and not (importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX")):
        raise ConfigError("logger=tensorboard needs the tensorboard package: pip install 'lmpretrain[tensorboard]' "
                          "(or drop it: logger=csv)")


def fit_run(cfg: DictConfig, run: Run, test: bool = False) -> dict[str, float]:
    """Fit (resuming from `cfg.ckpt_path` when set); with `test`, score the best checkpoint on the
    test split as well (`test/*`). With trainer.max_steps=0 (evaluate e.g. a pretrained checkpoint
    zero-shot) nothing is trained and no checkpoint is written: the module as built is validated and
    tested. Returns the final logged metrics."""
    datamodule, module, trainer = run
    for lg in trainer.loggers:
        lg.log_hyperparams(to_dict(cfg))
    try:
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        except SIGTERMException:  # SIGTERM before training began (Lightning's handler): nothing to save
            raise Preempted("preempted by SIGTERM before the first step; nothing was saved, run again",
                            signal.SIGTERM) from None
        if trainer.global_step == 0:  # nothing trained (trainer.max_steps=0): score the module as built
            trainer.validate(module, datamodule=datamodule, verbose=False)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if best:
            log.info("best checkpoint: %s", best)
        if test and datamodule.has_split("test"):
            results = trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
            metrics.update({k: float(v) for k, v in (results[0] if results else {}).items()})
    finally:
        close_wandb_runs(trainer)
    return metrics


def close_wandb_runs(trainer: L.Trainer) -> None:
    """A sweep runs its jobs in one process: close each job's wandb run so the next starts its own."""
    for lg in trainer.loggers:
        if not isinstance(lg, LightningWandbLogger):
            continue
        run = lg.started_run() if isinstance(lg, WandbLogger) else lg._experiment  # ours may be starting
        if run is not None:
            offline = run.settings.mode == "offline"
            sync_dir = run.settings.sync_dir
            run.finish()
            if offline and trainer.is_global_zero:
                log.info("wandb ran offline; upload this run with: wandb sync %s", sync_dir)


def main(run: Callable[[DictConfig], dict[str, float]], cfg: DictConfig) -> float | None:
    """The body of every `@hydra.main`: run, log the final metrics, and return the one a Hydra
    sweeper optimizes (`optimized_metric`, e.g. Optuna minimizing val/loss). A single run turns a
    user error into one `error: ...` line and exit status 2; in a multirun the error reaches the
    sweeper, which records that job as failed and goes on with the next."""

    def report(cfg: DictConfig) -> float | None:
        startup.freeze_imports()  # every import is done by now
        if missing := OmegaConf.missing_keys(cfg):  # before any work (a tokenizer trained in vain)
            raise missing_values_error(missing)
        metrics = run(cfg)
        log.info("final metrics: %s", {k: round(v, 4) for k, v in metrics.items()})
        return metrics.get(cfg.get("optimized_metric", "val/loss"))

    if HydraConfig.get().mode == RunMode.MULTIRUN:
        return report(cfg)
    return exit_on_user_error(report)(cfg)
