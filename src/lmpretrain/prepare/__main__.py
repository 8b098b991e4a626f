"""`python -m lmpretrain.prepare [prepare=shared_mix] [key=value ...]`: a thin `@hydra.main` around
`prepare(cfg)` (see `lmpretrain.prepare.pipeline`); prints the run's summary as JSON."""

from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig

from lmpretrain.errors import exit_on_user_error
from lmpretrain.prepare.pipeline import prepare


# relative to this file: lmpretrain.config.CONF_DIR would import torch (through lmpretrain.models)
@hydra.main(config_path="../../../conf", config_name="prepare", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    summary = prepare(cfg)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
