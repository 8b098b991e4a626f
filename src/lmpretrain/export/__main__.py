"""`python -m lmpretrain.export ckpt_path=<.ckpt or HF folder> to=hf|onnx|int8|pruned|ckpt [out=...]`:
a thin `@hydra.main` around `lmpretrain.export.convert.export(cfg)`; prints the report as JSON."""

from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig

from lmpretrain.config import CONF_DIR
from lmpretrain.errors import exit_on_user_error
from lmpretrain.export.convert import export


@hydra.main(config_path=str(CONF_DIR), config_name="export", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    print(json.dumps(export(cfg), indent=2))


if __name__ == "__main__":
    main()
