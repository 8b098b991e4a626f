"""`python -m lmpretrain.finetune task=<name> pretrained=<ckpt> [overrides]`: fine-tune on a downstream task.

A thin `@hydra.main` around `finetune(cfg) -> metrics`, which tests call directly. With
`pretrained=`, the network and tokenizer come from a pretraining checkpoint and a fresh task head is
attached; without it, the `model`/`tokenizer` groups build a from-scratch baseline. The run itself
is built and fitted by `lmpretrain.run`.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from lmpretrain import run
from lmpretrain.config import CONF_DIR


def build(cfg: DictConfig) -> run.Run:
    """(datamodule, module, trainer) for a fine-tuning config, without training."""
    return run.build_run(cfg, "task")


def finetune(cfg: DictConfig) -> dict[str, float]:
    """Fit, then (evaluate_test) score the best checkpoint on the test split; return the metrics."""
    return run.fit_run(cfg, build(cfg), test=bool(cfg.get("evaluate_test")))


@hydra.main(config_path=str(CONF_DIR), config_name="finetune", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    return run.main(finetune, cfg)


if __name__ == "__main__":
    main()
