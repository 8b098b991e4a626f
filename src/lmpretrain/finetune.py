"""`python -m lmpretrain.finetune task=<name> pretrained=<ckpt> [overrides]`: fine-tune on a downstream task.

A thin `@hydra.main` around `finetune(cfg) -> metrics`, which tests call directly. With
`pretrained=`, the network and tokenizer come from a pretraining checkpoint and a fresh task head is
attached; without it, the `model`/`tokenizer` groups build a from-scratch baseline.
"""

from __future__ import annotations

import logging

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig
from tokenizers import Tokenizer

from lmpretrain.config import CONF_DIR, check_model_fits_data, to_dict
from lmpretrain.distributed import resolve_trainer_config, resolve_unused_parameters
from lmpretrain.errors import ConfigError, exit_on_user_error
from lmpretrain.module import RuntimeOptions
from lmpretrain.tasks.base import read_pretrained
from lmpretrain.train import build_trainer, close_wandb_runs

log = logging.getLogger(__name__)


def build(cfg: DictConfig):
    """Datamodule, fine-tuning LightningModule and Trainer from a composed config (no training)."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    trainer_cfg = resolve_trainer_config(cfg)
    pretrained = read_pretrained(cfg.pretrained) if cfg.get("pretrained") else None
    datamodule = instantiate(cfg.data)
    if pretrained:
        datamodule.set_tokenizer(Tokenizer.from_str(pretrained["tokenizer_json"]))
    datamodule.prepare_data()
    model = pretrained["model"] if pretrained else to_dict(cfg.model)
    if datamodule.block_size is None:  # examples as long as the model reads
        datamodule.block_size = model["block_size"]
    if pretrained and datamodule.block_size > model["block_size"]:
        raise ConfigError(f"data.block_size={datamodule.block_size} exceeds the pretrained model's "
                          f"block_size={model['block_size']}; lower data.block_size or leave it null")
    model = check_model_fits_data(model, datamodule.block_size, datamodule.vocab_size)
    module = instantiate(cfg.task, model=model, labels=datamodule.labels, optimizer=to_dict(cfg.optimizer),
                         scheduler=to_dict(cfg.scheduler), _convert_="all")
    if pretrained:
        module.load_pretrained_network(pretrained["network"])
    module.tokenizer_json = datamodule.tokenizer.to_str()
    module.runtime = RuntimeOptions(**to_dict(cfg.get("runtime")))
    resolve_unused_parameters(trainer_cfg, module)
    return datamodule, module, build_trainer(cfg, trainer_cfg)


def finetune(cfg: DictConfig) -> dict[str, float]:
    """Fit, then (evaluate_test) score the best checkpoint on the test split; return the metrics."""
    datamodule, module, trainer = build(cfg)
    for lg in trainer.loggers:
        lg.log_hyperparams(to_dict(cfg))
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if cfg.get("evaluate_test") and "test" in datamodule.files:
            best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
            results = trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
            metrics.update({k: float(v) for k, v in (results[0] if results else {}).items()})
    finally:
        close_wandb_runs(trainer)
    return metrics


@hydra.main(config_path=str(CONF_DIR), config_name="finetune", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        return finetune_and_report(cfg)
    return exit_on_user_error(finetune_and_report)(cfg)


def finetune_and_report(cfg: DictConfig) -> float | None:
    metrics = finetune(cfg)
    log.info("final metrics: %s", {k: round(v, 4) for k, v in metrics.items()})
    return metrics.get(cfg.get("optimized_metric", "val/loss"))


if __name__ == "__main__":
    main()
