"""Lightning path vs a bare PyTorch loop: same model, same batches, same optimizer, one process.

    python bench/throughput.py [--steps 300] [--warmup 20] [--model gpt_tiny] [--repeats 2]

(a) `CausalLMModule` driven by `lightning.Trainer` (gradient clipping, LR schedule stepped per
step, `train/loss` logged every step, the throughput callback), and (b) nanoGPT's inner loop:
forward, cross-entropy, backward, clip, AdamW step, schedule step. Both see identical batches
from the tiny-shakespeare DataModule. Runs alternate (a, b, a, b, ...) so drift in machine speed
hits both; the best run of each is reported. Prints tokens/s of each and the ratio (target >= 0.95).

`--extra compiled,bf16` adds bare-loop variants: the network under `torch.compile` (inductor) and
under bf16 autocast. Every line also shows MFU: model FLOPs (the objective's 6N + attention count)
over the peak of this device (CPU: the measured best fp32 / bf16 matmul rate, printed too).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
import yaml

from lmpretrain.callbacks.throughput import peak_flops
from lmpretrain.data import PackedTextDataModule
from lmpretrain.objectives import CausalLMModule
from lmpretrain.optim import build_optimizer, build_scheduler

CONF = Path(__file__).resolve().parents[1] / "conf"


class StepTimer(L.Callback):
    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self.end = time.perf_counter()


def load_cfgs(model_name: str):
    model = yaml.safe_load((CONF / "model" / f"{model_name}.yaml").read_text())
    opt = {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.99], "weight_decay": 0.1}
    return model, opt


def lightning_run(batches, model_cfg, opt, sched, warmup) -> float:
    torch.manual_seed(0)
    module = CausalLMModule(model_cfg, opt, sched)
    timer = StepTimer(warmup)
    from lmpretrain.callbacks import TokenThroughput

    trainer = L.Trainer(
        max_steps=len(batches), logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, gradient_clip_val=1.0, limit_val_batches=0, num_sanity_val_steps=0,
        callbacks=[timer, TokenThroughput()], accelerator="cpu", devices=1, precision="32-true",
    )
    # batch_size=None: the pre-made batches as they are (a bare list would read as one loader per batch)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    n_tokens = sum(b["input_ids"].numel() for b in batches[warmup:])
    return n_tokens / (timer.end - timer.start)


def bare_run(batches, model_cfg, opt, sched, warmup, compiled: bool = False, bf16: bool = False) -> float:
    torch.manual_seed(0)
    network = CausalLMModule(model_cfg, opt, sched).network  # the same nn.Module, no Lightning around it
    if compiled:
        network.compile()  # compiles on the first (warm-up) batch
    optimizer = build_optimizer(network, **opt)
    scheduler = build_scheduler(optimizer, **sched)
    network.train()
    for i, batch in enumerate(batches):
        if i == warmup:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = network(batch["input_ids"])
        loss = F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        loss.item()  # the Lightning path reads the loss every step too (logging)
    n_tokens = sum(b["input_ids"].numel() for b in batches[warmup:])
    return n_tokens / (time.perf_counter() - start)


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--model", default="gpt_tiny")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--extra", default="", help="comma-separated bare-loop variants: compiled, bf16")
    args = p.parse_args(argv)
    extra = [v for v in args.extra.split(",") if v]

    model_cfg, opt = load_cfgs(args.model)
    dm = PackedTextDataModule(["tinyshakespeare.txt"], tokenizer={"kind": "char", "unk_token": "<unk>"},
                              block_size=model_cfg["block_size"], batch_size=12)
    dm.setup("fit")
    model_cfg["vocab_size"] = dm.vocab_size
    it = iter(dm.train_dataloader())
    batches = [next(it) for _ in range(args.steps)]
    sched = {"name": "cosine", "warmup_steps": 100, "max_steps": args.steps, "min_lr": 1e-4}

    results = {"lightning": [], "bare": [], **{f"bare_{v}": [] for v in extra}}
    for _ in range(args.repeats):
        results["lightning"].append(lightning_run(batches, model_cfg, opt, sched, args.warmup))
        results["bare"].append(bare_run(batches, model_cfg, opt, sched, args.warmup))
        for v in extra:
            results[f"bare_{v}"].append(bare_run(batches, model_cfg, opt, sched, args.warmup,
                                                 compiled=v == "compiled", bf16=v == "bf16"))
    best = {k: max(v) for k, v in results.items()}
    ratio = best["lightning"] / best["bare"]
    flops_per_token = CausalLMModule(model_cfg).flops_per_token(model_cfg["block_size"])
    peaks = {p: peak_flops(torch.device("cpu"), p) for p in ("32-true", "bf16-mixed")}
    print(f"model={args.model} steps={args.steps} batch=12x{model_cfg['block_size']} threads={torch.get_num_threads()}")
    print(f"model FLOPs/token {flops_per_token:,.0f}; measured CPU peak fp32 {peaks['32-true'] / 1e9:,.1f} "
          f"GFLOP/s, bf16 {peaks['bf16-mixed'] / 1e9:,.1f} GFLOP/s")
    for k, v in results.items():
        peak = peaks["bf16-mixed" if k.endswith("bf16") else "32-true"]
        mfu = best[k] * flops_per_token / peak
        print(f"{k:>14}: best {best[k]:,.0f} tokens/s  MFU {mfu:.1%}  (runs: {', '.join(f'{x:,.0f}' for x in v)})")
    for v in extra:
        print(f"ratio bare_{v}/bare = {best[f'bare_{v}'] / best['bare']:.3f}")
    print(f"ratio lightning/bare = {ratio:.3f}  (target >= 0.95)")
    return ratio


if __name__ == "__main__":
    sys.exit(0 if main() >= 0.95 else 1)
