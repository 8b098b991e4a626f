from __future__ import annotations

import os
from pathlib import Path

import pytest
from omegaconf import DictConfig

from lmpretrain.config import compose_config
from lmpretrain.paths import data_root

DATA = data_root()
SHAKESPEARE = DATA / "tinyshakespeare.txt"


if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n 2` on a 2-core machine: one thread per worker (and per process it starts), since
    # two workers each running torch on every core oversubscribe it, and spinning OpenMP threads
    # that wait for a core make each step many times slower.
    import torch

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """One tokenizer/token cache for the whole session; never the user's own cache."""
    cache = os.environ.get("LMPRETRAIN_TEST_CACHE") or str(tmp_path_factory.mktemp("cache"))
    os.environ["LMPRETRAIN_CACHE"] = cache
    os.environ.setdefault("WANDB_MODE", "disabled")  # tests that need wandb set it themselves
    yield


def make_cfg(output_dir: Path, overrides: list[str] = (), config_name: str = "train") -> DictConfig:
    """Compose a config as `@hydra.main` would, with outputs under `output_dir`."""
    return compose_config(config_name, overrides, output_dir)


def require_data(*names: str) -> None:
    missing = [n for n in names if not (DATA / n).is_file()]
    if missing:
        pytest.fail(f"shared data missing: {missing} under {DATA} (set LMPRETRAIN_DATA)")
