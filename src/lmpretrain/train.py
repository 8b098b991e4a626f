"""`python -m lmpretrain.train [overrides]`: pretrain a language model.

A thin `@hydra.main` around `train(cfg) -> metrics`, which tests call directly; the run itself is
built and fitted by `lmpretrain.run`.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from lmpretrain import run
from lmpretrain.config import CONF_DIR


def build(cfg: DictConfig) -> run.Run:
    """(datamodule, module, trainer) for a pretraining config, without training."""
    return run.build_run(cfg, "objective")


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the model; return the final logged metrics (train/loss, val/loss, val/ppl, ...)."""
    return run.fit_run(cfg, build(cfg))


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    return run.main(train, cfg)


if __name__ == "__main__":
    main()
