"""Every config group option composes and resolves; every experiment trains with debug=fast."""

import pytest
from omegaconf import OmegaConf

from conftest import make_cfg
from lmpretrain.config import CONF_DIR, to_dict
from lmpretrain.distributed import resolve_trainer_config
from lmpretrain.models import build_network
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


GPU_RECIPES = {"gpt2_124m"}  # a step is ~0.5M tokens: checked below at reduced size instead


@pytest.mark.parametrize("experiment", sorted(set(options("experiment")) - GPU_RECIPES))
def test_every_experiment_runs_fast(tmp_path, experiment):
    metrics = train(make_cfg(tmp_path, [f"experiment={experiment}", "debug=fast"]))
    assert metrics["val/loss"] > 0 and metrics["train/loss"] > 0
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_gpt2_124m_recipe_is_gpt2_small_and_runs_when_shrunk(tmp_path):
    cfg = make_cfg(tmp_path, ["experiment=gpt2_124m"])
    network = build_network({**to_dict(cfg.model), "vocab_size": 50304})
    assert sum(p.numel() for p in network.parameters()) == 124_475_904  # nanoGPT's GPT-2 124M, vocab 50304
    trainer = resolve_trainer_config(cfg)
    assert (trainer.accumulate_grad_batches, cfg.data.batch_size * 1024 * 30) == (30, 491_520)
    assert (cfg.optimizer.lr, cfg.scheduler.min_lr, list(cfg.optimizer.betas)) == (6e-4, 6e-5, [0.9, 0.95])
    # The same recipe, shrunk to CPU size: data, BPE training, schedule and objective fit together.
    small = ["model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=64", "data.batch_size=4",
             "global_batch_size=8", "tokenizer.vocab_size=600", "runtime.compile=false", "data.num_workers=0"]
    metrics = train(make_cfg(tmp_path, ["experiment=gpt2_124m", "debug=fast", *small]))
    assert metrics["val/loss"] > 0 and metrics["train/loss"] > 0
