"""Turning the composed Hydra config into objects, with every problem reported up front."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

import lmpretrain.paths  # noqa: F401  (registers ${repo_root:}, ${data_root:}, ${cache_root:})
import lmpretrain.sweeps  # noqa: F401  (registers ${run_name:}, ${run_group:})
from lmpretrain.errors import ConfigError
from lmpretrain.models import model_config

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose_config(config_name: str, overrides: list[str] | tuple[str, ...], output_dir: str | Path) -> DictConfig:
    """Compose `conf/<config_name>.yaml` with `overrides` as its `@hydra.main` entrypoint would,
    with run outputs under `output_dir`: for scripts (bench/) and tests that call the plain
    functions (`train(cfg)`, `finetune(cfg)`, ...) instead of the command line."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # ${hydra:...} interpolations and HydraConfig.get() work
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        del cfg.hydra
    return cfg


def to_dict(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})


def check_model_fits_data(model: dict, data_block_size: int, vocab_size: int) -> dict:
    """Fill model.vocab_size from the tokenizer and reject a model that cannot read the data."""
    problems = []
    model = dict(model)
    if not model.get("vocab_size"):
        model["vocab_size"] = vocab_size
    elif model["vocab_size"] < vocab_size:
        problems.append(
            f"model.vocab_size={model['vocab_size']} is smaller than the tokenizer's {vocab_size} tokens; "
            f"unset model.vocab_size or use a matching tokenizer"
        )
    if "block_size" in model and data_block_size > model["block_size"]:
        problems.append(
            f"data.block_size={data_block_size} is longer than model.block_size={model['block_size']}; "
            f"lower data.block_size or raise model.block_size"
        )
    if problems:
        raise ConfigError("; ".join(problems))
    model_config(model)  # the model's own checks (head sizes, positions...), before anything is built
    return model


def wandb_offline_unless_configured() -> None:
    """A fresh machine has no wandb key: log offline rather than prompt or fail.

    WANDB_MODE, when set, always wins; so does a key in WANDB_API_KEY or ~/.netrc.
    """
    if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"):
        return
    netrc = Path.home() / ".netrc"
    if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return
    os.environ["WANDB_MODE"] = "offline"
