"""`python -m lmpretrain.train [overrides]`: pretrain a language model.

A thin `@hydra.main` around `train(cfg) -> metrics`, which tests call directly.
"""

from __future__ import annotations

import logging

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig

from lmpretrain.config import CONF_DIR, check_model_fits_data, to_dict, wandb_offline_unless_configured
from lmpretrain.distributed import resolve_trainer_config, resolve_unused_parameters
from lmpretrain.errors import exit_on_user_error
from lmpretrain.module import RuntimeOptions

log = logging.getLogger(__name__)


def build(cfg: DictConfig):
    """Datamodule, LightningModule and Trainer from a composed config (no training)."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    trainer_cfg = resolve_trainer_config(cfg)  # precision=auto, global batch -> accumulation; checked first
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()  # trains/loads the tokenizer: the model's vocabulary comes from it
    model = check_model_fits_data(to_dict(cfg.model), datamodule.block_size, datamodule.vocab_size)
    module = instantiate(cfg.objective, model=model, _convert_="all")
    module.tokenizer_json = datamodule.tokenizer.to_str()
    module.runtime = RuntimeOptions(**to_dict(cfg.get("runtime")))
    resolve_unused_parameters(trainer_cfg, module)
    return datamodule, module, build_trainer(cfg, trainer_cfg)


def build_trainer(cfg: DictConfig, trainer_cfg: DictConfig) -> L.Trainer:
    """The Trainer with the config's callbacks and loggers (wandb offline unless configured)."""
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    logger_cfgs = [c for c in (cfg.get("logger") or {}).values() if c is not None]
    if any("wandb" in str(c.get("_target_", "")).lower() for c in logger_cfgs):
        wandb_offline_unless_configured()
    loggers = [instantiate(c) for c in logger_cfgs]
    return instantiate(trainer_cfg, callbacks=callbacks, logger=loggers or False)


def close_wandb_runs(trainer: L.Trainer) -> None:
    """A sweep runs its jobs in one process: close each job's wandb run so the next starts its own."""
    for lg in trainer.loggers:
        if type(lg).__name__ == "WandbLogger" and lg._experiment is not None:
            lg.experiment.finish()


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the model; return the final logged metrics (train/loss, val/loss, val/ppl, ...)."""
    datamodule, module, trainer = build(cfg)
    for lg in trainer.loggers:
        lg.log_hyperparams(to_dict(cfg))
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    finally:
        close_wandb_runs(trainer)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.best_model_path:
        log.info("best checkpoint: %s", trainer.checkpoint_callback.best_model_path)
    return metrics


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        # Errors reach the sweeper, which records the run as failed and goes on to the next one.
        return train_and_report(cfg)
    return exit_on_user_error(train_and_report)(cfg)


def train_and_report(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    log.info("final metrics: %s", {k: round(v, 4) for k, v in metrics.items()})
    # Returned value = the objective of Hydra sweepers (e.g. Optuna minimizes val/loss).
    return metrics.get(cfg.get("optimized_metric", "val/loss"))


if __name__ == "__main__":
    main()
