from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from lmpretrain.config import CONF_DIR
from lmpretrain.paths import data_root

DATA = data_root()
SHAKESPEARE = DATA / "tinyshakespeare.txt"


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """One tokenizer/token cache for the whole session; never the user's own cache."""
    cache = os.environ.get("LMPRETRAIN_TEST_CACHE") or str(tmp_path_factory.mktemp("cache"))
    os.environ["LMPRETRAIN_CACHE"] = cache
    os.environ.setdefault("WANDB_MODE", "disabled")  # tests that need wandb set it themselves
    yield


def make_cfg(output_dir: Path, overrides: list[str] = (), config_name: str = "train") -> DictConfig:
    """Compose a config as `@hydra.main` would, with outputs under `output_dir`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        del cfg.hydra
    return cfg


def require_data(*names: str) -> None:
    missing = [n for n in names if not (DATA / n).is_file()]
    if missing:
        pytest.fail(f"shared data missing: {missing} under {DATA} (set LMPRETRAIN_DATA)")
