"""Every config group option composes and resolves; every experiment trains with debug=fast."""

import pytest
from omegaconf import OmegaConf

from conftest import make_cfg
from lmpretrain.config import CONF_DIR
from lmpretrain.train import train

GROUPS = ["data", "tokenizer", "model", "objective", "optimizer", "scheduler", "trainer", "strategy",
          "precision", "logger", "callbacks", "paths", "debug"]


def options(group):
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes(tmp_path, group, option):
    cfg = make_cfg(tmp_path, [f"{group}={option}"])
    resolved = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert resolved["trainer"]["_target_"] == "lightning.pytorch.Trainer"


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_runs_fast(tmp_path, experiment):
    metrics = train(make_cfg(tmp_path, [f"experiment={experiment}", "debug=fast"]))
    assert metrics["val/loss"] > 0 and metrics["train/loss"] > 0
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
