"""Dashboards: TensorBoard gets the same scalars as the CSV log; wandb runs are tagged and grouped;
tokens seen is logged as an x axis and continues across a resume."""

from __future__ import annotations

import csv

import pytest

from conftest import make_cfg
from lmpretrain.train import build, train

FAST = ["trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.limit_val_batches=2",
        "trainer.log_every_n_steps=2", "trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false",
        "callbacks.rich_progress_bar=null", "data.batch_size=8"]


def _csv(run_dir, key):
    with open(run_dir / "csv" / "metrics.csv") as f:
        return {int(r["step"]): float(r[key]) for r in csv.DictReader(f) if r.get(key)}


@pytest.mark.slow
def test_tensorboard_logs_what_csv_logs(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(make_cfg(tmp_path, [*FAST, "logger=[csv,tensorboard]"]))
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    for key in ["train/loss", "val/loss", "train/tokens_seen"]:
        tb = {e.step: e.value for e in events.Scalars(key)}
        assert tb == pytest.approx(_csv(tmp_path, key)), key
    # 8 sequences x 64 tokens per step (gpt_tiny on tiny-shakespeare): tokens seen by steps 2 and 4
    assert sorted(_csv(tmp_path, "train/tokens_seen").values()) == [2 * 8 * 64, 4 * 8 * 64]


@pytest.mark.slow
def test_tokens_seen_continues_after_resume(tmp_path):
    train(make_cfg(tmp_path / "a", [*FAST, "logger=csv"]))
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    train(make_cfg(tmp_path / "b", [*FAST, "logger=csv", "trainer.max_steps=6", f"ckpt_path={last}"]))
    assert list(_csv(tmp_path / "b", "train/tokens_seen").values()) == [6 * 8 * 64]  # 4 steps before, 2 after


def test_wandb_run_is_tagged_and_grouped(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    _, _, trainer = build(make_cfg(tmp_path, [*FAST, "logger=wandb", "logger.wandb.tags=[mine]",
                                              "objective=causal_lm", "model=gpt_tiny"]))
    (wandb,) = trainer.loggers
    init = wandb._wandb_init
    assert init["tags"] == ["mine", "model:gpt_tiny", "objective:causal_lm", "precision:32-true", "strategy:auto"]
    assert init["group"] == "train" and "anonymous" not in init


def test_tensorboard_missing_is_one_line(tmp_path, monkeypatch):
    import importlib.util

    from lmpretrain.errors import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("tensorboard", "tensorboardX") else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'lmpretrain\[tensorboard\]'"):
        build(make_cfg(tmp_path, [*FAST, "logger=tensorboard"]))
