"""Streaming data vs training step: can the DataModule keep a training step fed?

    python bench/data_throughput.py [--batches 300] [--steps 5]

Prepares shards (tiny shakespeare + Debian descriptions, byte-level BPE) once into a temp folder,
then measures in one run:
  (a) tokens/s the `data=shards` DataModule delivers (train loader, 2 sources mixed by weight,
      block 256 x batch 12, the model=gpt_small shapes), and
  (b) tokens/s one training step of model=gpt_small consumes (forward, backward, AdamW step),
and prints the ratio (target >= 20).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from lmpretrain.config import CONF_DIR
from lmpretrain.data import ShardsDataModule
from lmpretrain.models import build_network
from lmpretrain.optim import build_optimizer
from lmpretrain.paths import data_root
from lmpretrain.prepare import prepare


def prepare_shards(out: Path) -> None:
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("prepare", overrides=[
            f"output_dir={out}", "workers=1", "progress=false", "report.plots=false", "tokenizer.vocab_size=4096",
            f"+sources.debian.path={data_root()}/debian_packages.validation.jsonl.gz", "+sources.debian.format=jsonl",
            "+sources.debian.field=description",
        ], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra  # as under @hydra.main
    prepare(cfg)


def data_tokens_per_sec(dm: ShardsDataModule, n_batches: int) -> float:
    it = iter(dm.train_dataloader())
    next(it)  # open files, build the first epoch's order
    start, tokens = time.perf_counter(), 0
    for _ in range(n_batches):
        tokens += next(it)["input_ids"].numel()
    return tokens / (time.perf_counter() - start)


def train_tokens_per_sec(dm: ShardsDataModule, steps: int) -> float:
    model_cfg = yaml.safe_load((CONF_DIR / "model" / "gpt_small.yaml").read_text())
    model_cfg["vocab_size"] = dm.vocab_size
    net = build_network(model_cfg)
    opt = build_optimizer(net, "adamw", lr=1e-3, weight_decay=0.1)
    batches = [b for b, _ in zip(dm.train_dataloader(), range(steps + 1))]
    for i, batch in enumerate(batches):
        if i == 1:
            start = time.perf_counter()  # the first step pays one-off allocation costs
        loss = F.cross_entropy(net(batch["input_ids"]).flatten(0, 1), batch["labels"].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return sum(b["input_ids"].numel() for b in batches[1:]) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batches", type=int, default=300)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        prepare_shards(Path(tmp) / "shards")
        dm = ShardsDataModule(str(Path(tmp) / "shards"), weights={"shakespeare": 1, "debian": 1}, block_size=256,
                              batch_size=12)
        dm.setup("fit")
        data = data_tokens_per_sec(dm, args.batches)
        step = train_tokens_per_sec(dm, args.steps)
    print(f"threads={torch.get_num_threads()}  batch=12x256  model=gpt_small")
    print(f"data=shards delivers : {data:,.0f} tokens/s")
    print(f"gpt_small step eats  : {step:,.0f} tokens/s")
    print(f"ratio data/train = {data / step:.1f}  (target >= 20)")


if __name__ == "__main__":
    main()
