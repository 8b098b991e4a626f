"""Lightning path vs a bare PyTorch loop: same model, same batches, same optimizer, one process.

    python bench/throughput.py [--steps 300] [--warmup 20] [--model gpt_tiny] [--repeats 2]
    python bench/throughput.py --device cuda --model gpt2_124m --data random --batch-size 16 \
        --steps 100 --extra bf16,compiled_bf16   # on a GPU: bf16 eager vs compiled, MFU
    python bench/throughput.py --device cuda --model gpt2_124m --data random --batch-size 16 \
        --steps 60 --precision bf16-mixed --extra compiled   # Lightning vs bare loop, both in bf16

(a) `CausalLMModule` driven by `lightning.Trainer` (gradient clipping, LR schedule stepped per
step, `train/loss` logged every step, the throughput callback), and (b) nanoGPT's inner loop:
forward, cross-entropy, backward, clip, AdamW step, schedule step. Both see identical batches
from the tiny-shakespeare DataModule. Runs alternate (a, b, a, b, ...) so drift in machine speed
hits both; the best run of each is reported. Prints tokens/s of each and the ratio (target >= 0.95).

`--precision bf16-mixed` runs both (a) and (b) under bf16 autocast (the GPU default, `precision=auto`).
`--extra compiled,bf16,compiled_bf16` adds bare-loop variants: the network under `torch.compile`
(inductor), under bf16 autocast, and both. Every line also shows MFU: model FLOPs (the objective's 6N + attention count)
over the peak of this device (CPU: the measured best fp32 / bf16 matmul rate, printed too; GPU: the
datasheet table in `callbacks/throughput.py`). `--data random` draws uniform tokens over the model's
own vocabulary (speed does not depend on the text; a 65-symbol character vocabulary would shrink
GPT-2's LM head to nothing).
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


def random_batches(model_cfg: dict, steps: int, batch_size: int) -> list[dict[str, torch.Tensor]]:
    """`steps` seeded batches of uniform tokens over the model's own vocabulary, which is written into
    `model_cfg` (configs that take it from the tokenizer get GPT-2's padded 50304)."""
    g = torch.Generator().manual_seed(0)
    T, V = model_cfg["block_size"], model_cfg.get("vocab_size") or 50304
    model_cfg["vocab_size"] = V
    batches = []
    for _ in range(steps):
        ids = torch.randint(0, V, (batch_size, T + 1), generator=g)
        batches.append({"input_ids": ids[:, :-1], "labels": ids[:, 1:]})
    return batches


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def lightning_run(batches, model_cfg, opt, sched, warmup, device: torch.device, precision: str) -> float:
    torch.manual_seed(0)
    module = CausalLMModule(model_cfg, opt, sched)
    timer = StepTimer(warmup)
    from lmpretrain.callbacks import TokenThroughput

    trainer = L.Trainer(
        max_steps=len(batches), logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, gradient_clip_val=1.0, limit_val_batches=0, num_sanity_val_steps=0,
        callbacks=[timer, TokenThroughput()], accelerator=device.type, devices=1, precision=precision,
    )
    # batch_size=None: the pre-made batches as they are (a bare list would read as one loader per batch)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    n_tokens = sum(b["input_ids"].numel() for b in batches[warmup:])
    return n_tokens / (timer.end - timer.start)


def bare_run(batches, model_cfg, opt, sched, warmup, device: torch.device, compiled: bool = False,
             bf16: bool = False) -> float:
    torch.manual_seed(0)
    network = CausalLMModule(model_cfg, opt, sched).network.to(device)  # the same nn.Module, no Lightning
    if compiled:
        network.compile()  # compiles on the first (warm-up) batch
    optimizer = build_optimizer(network, **opt)
    scheduler = build_scheduler(optimizer, **sched)
    network.train()
    for i, batch in enumerate(batches):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        ids, labels = batch["input_ids"].to(device, non_blocking=True), batch["labels"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = network(ids)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        loss.item()  # the Lightning path reads the loss every step too (logging)
    sync(device)
    n_tokens = sum(b["input_ids"].numel() for b in batches[warmup:])
    return n_tokens / (time.perf_counter() - start)


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--model", default="gpt_tiny")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--extra", default="", help="comma-separated bare-loop variants: compiled, bf16, compiled_bf16")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=12)
    p.add_argument("--data", default="shakespeare", choices=["shakespeare", "random"])
    p.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"],
                   help="of the Lightning run and the bare loop (bf16-mixed: bf16 autocast in both)")
    args = p.parse_args(argv)
    extra = [v for v in args.extra.split(",") if v]
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)

    model_cfg, opt = load_cfgs(args.model)
    bf16 = args.precision == "bf16-mixed"
    if args.data == "random":
        batches = random_batches(model_cfg, args.steps, args.batch_size)
    else:
        dm = PackedTextDataModule(["tinyshakespeare.txt"], tokenizer={"kind": "char", "unk_token": "<unk>"},
                                  block_size=model_cfg["block_size"], batch_size=args.batch_size)
        dm.setup("fit")
        model_cfg["vocab_size"] = dm.vocab_size
        it = iter(dm.train_dataloader())
        batches = [next(it) for _ in range(args.steps)]
    sched = {"name": "cosine", "warmup_steps": 100, "max_steps": args.steps, "min_lr": 1e-4}

    results = {"lightning": [], "bare": [], **{f"bare_{v}": [] for v in extra}}
    for _ in range(args.repeats):
        results["lightning"].append(lightning_run(batches, model_cfg, opt, sched, args.warmup, device, args.precision))
        results["bare"].append(bare_run(batches, model_cfg, opt, sched, args.warmup, device, bf16=bf16))
        for v in extra:
            results[f"bare_{v}"].append(bare_run(batches, model_cfg, opt, sched, args.warmup, device,
                                                 compiled="compiled" in v, bf16=bf16 or "bf16" in v))
    best = {k: max(v) for k, v in results.items()}
    ratio = best["lightning"] / best["bare"]
    flops_per_token = CausalLMModule(model_cfg).flops_per_token(model_cfg["block_size"])
    peaks = {p: peak_flops(device, p) for p in ("32-true", "bf16-mixed")}
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"model={args.model} steps={args.steps} batch={args.batch_size}x{model_cfg['block_size']} "
          f"data={args.data} device={where} precision={args.precision}")
    shown = {k: "?" if v is None else f"{v / 1e9:,.1f}" for k, v in peaks.items()}
    print(f"model FLOPs/token {flops_per_token:,.0f}; peak fp32 {shown['32-true']} GFLOP/s, "
          f"bf16 {shown['bf16-mixed']} GFLOP/s")
    for k, v in results.items():
        peak = peaks["bf16-mixed" if bf16 or "bf16" in k else "32-true"]
        mfu = "?" if peak is None else f"{best[k] * flops_per_token / peak:.1%}"
        print(f"{k:>14}: best {best[k]:,.0f} tokens/s  MFU {mfu}  (runs: {', '.join(f'{x:,.0f}' for x in v)})")
    for v in extra:
        print(f"ratio bare_{v}/bare = {best[f'bare_{v}'] / best['bare']:.3f}")
    if "bf16" in extra and "compiled_bf16" in extra:
        print(f"ratio bare_compiled_bf16/bare_bf16 = {best['bare_compiled_bf16'] / best['bare_bf16']:.3f}"
              "  (GPU goal >= 1.2)")
    print(f"ratio lightning/bare = {ratio:.3f}  (target >= 0.95)")
    return ratio


if __name__ == "__main__":
    sys.exit(0 if main() >= 0.95 else 1)
