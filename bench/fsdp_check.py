"""FSDP2 on one device vs the plain strategy, and a resume from FSDP2's sharded checkpoint.

    python bench/fsdp_check.py --device cuda                       # on a GPU: bf16-mixed, nccl
    python bench/fsdp_check.py --device cpu --model gpt_tiny      # the same on CPU (gloo, 32-true)

The multi-process parity of FSDP2, DDP and tensor parallelism is tested on CPU with gloo
(tests/distributed/); this runs the same `FSDP2Strategy` on the device the bench is given, so that
its CUDA path (nccl process group, `fully_shard` with bf16 autocast, DTensor parameters, a
distributed checkpoint) is exercised where the tests cannot reach. One process holds every shard,
so the numbers must match the plain run up to kernel order. Three runs on the same `--steps`
batches, one optimizer step each:

1. plain: `CausalLMModule` under Lightning's single-device strategy;
2. fsdp: the same under `FSDP2Strategy` (one unit per block);
3. resumed: FSDP2 for the first half, saved as a sharded checkpoint, then a new Trainer resumed from
   it for the second half. A list of batches has no position to restore (the project's data modules
   do): Lightning resumes at the saved batch index but reads the list from its start, so the resumed
   run is handed the list rotated by the steps done.

Prints the per-step losses of each, the largest difference of fsdp from plain and of resumed from fsdp,
peak device memory and tokens/s, and exits 1 if the resumed curve leaves fsdp's by more than `--tol`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from throughput import load_cfgs, random_batches  # bench/throughput.py, beside this script

from lmpretrain.distributed import FSDP2Strategy
from lmpretrain.objectives import CausalLMModule


class StepLosses(L.Callback):
    """The training loss of every optimizer step, and the wall time of the steps after the first."""

    def __init__(self):
        self.losses, self.start, self.end = [], None, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))
        if self.start is None:
            self.start = time.perf_counter()  # after the first step: compile, allocator warm-up
        self.end = time.perf_counter()


def run(model_cfg, batches, steps: int, total: int, device: str, precision: str, fsdp: bool, ckpt_in=None,
        ckpt_out=None):
    """Fit until optimizer step `steps` of a `total`-step schedule on `batches` (one step each)."""
    torch.manual_seed(0)
    opt = {"name": "adamw", "lr": 6e-4, "betas": [0.9, 0.95], "weight_decay": 0.1}
    sched = {"name": "cosine", "warmup_steps": 2, "max_steps": total, "min_lr": 6e-5}
    module = CausalLMModule(model_cfg, opt, sched)
    losses = StepLosses()
    trainer = L.Trainer(
        accelerator=device, devices=1, strategy=FSDP2Strategy() if fsdp else "auto", precision=precision,
        max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, gradient_clip_val=1.0, limit_val_batches=0, num_sanity_val_steps=0,
        callbacks=[losses], use_distributed_sampler=False,  # the batches in order under FSDP too
    )
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    loader = torch.utils.data.DataLoader(batches, batch_size=None)  # the pre-made batches, in order
    trainer.fit(module, train_dataloaders=loader, ckpt_path=ckpt_in)
    if ckpt_out is not None:
        trainer.save_checkpoint(ckpt_out)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    n_timed = len(losses.losses) - 1  # every batch has the same shape
    rate = batches[0]["input_ids"].numel() * n_timed / (losses.end - losses.start) if n_timed > 0 else float("nan")
    return losses.losses, peak, rate


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    p.add_argument("--model", default="gpt2_124m")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--block-size", type=int, default=None, help="default: the model's")
    p.add_argument("--tol", type=float, default=None,
                   help="largest |resumed - fsdp| loss allowed (default 1e-5 in fp32 on CPU, 2e-2 in bf16)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no GPU; use --device cpu")
        return 2
    precision = "bf16-mixed" if args.device == "cuda" else "32-true"
    tol = args.tol if args.tol is not None else (2e-2 if precision == "bf16-mixed" else 1e-5)
    model_cfg, _ = load_cfgs(args.model)
    T = args.block_size or model_cfg["block_size"]
    model_cfg.update(block_size=T, dropout=0.0)
    batches = random_batches(model_cfg, args.steps, args.batch_size)

    where = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"model={args.model} batch={args.batch_size}x{T} steps={args.steps} device={where} precision={precision}")
    n, half = args.steps, args.steps // 2
    plain, plain_mem, plain_rate = run(model_cfg, batches, n, n, args.device, precision, fsdp=False)
    fsdp, fsdp_mem, fsdp_rate = run(model_cfg, batches, n, n, args.device, precision, fsdp=True)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "half.ckpt"
        first, _, _ = run(model_cfg, batches, half, n, args.device, precision, fsdp=True, ckpt_out=ckpt)
        kind = "folder of shards" if ckpt.is_dir() else "file"
        rotated = batches[half:] + batches[:half]
        second, _, _ = run(model_cfg, rotated, n, n, args.device, precision, fsdp=True, ckpt_in=ckpt)
    resumed = first + second
    print(f"sharded checkpoint: a {kind}")
    print("step | plain | fsdp | resumed")
    for i, row in enumerate(zip(plain, fsdp, resumed), 1):
        print(f"{i:4d} | " + " | ".join(f"{x:.5f}" for x in row))
    d_fsdp = max(abs(a - b) for a, b in zip(plain, fsdp))
    d_resume = max(abs(a - b) for a, b in zip(fsdp, resumed)) if len(resumed) == len(fsdp) else float("inf")
    print(f"max |fsdp - plain| = {d_fsdp:.2e}; max |resumed - fsdp| = {d_resume:.2e} (tolerance {tol:g}); "
          f"resumed steps {len(resumed)} of {len(fsdp)}")
    print(f"tokens/s after the first step: plain {plain_rate:,.0f}, fsdp {fsdp_rate:,.0f}; "
          f"peak memory GiB: plain {plain_mem:.2f}, fsdp {fsdp_mem:.2f}")
    ok = d_resume <= tol and d_fsdp <= max(tol, 5e-2)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
