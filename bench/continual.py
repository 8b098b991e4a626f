"""Continual pretraining: how much does a char GPT forget of tiny-shakespeare (corpus A) while it
learns Debian package descriptions (corpus B), and how much do replay and layer freezing change that?

    python bench/continual.py                       # the README table (~12 min on 2 heavily shared cores; ~5 min with the pretraining reused)
    python bench/continual.py --steps 600           # longer continuation
    python bench/continual.py --smoke               # a few steps each: checks the plumbing only

One run: pretrain on A (experiment=shakespeare_char, cut to --pretrain-steps; reused from
<out>/pretrain when that checkpoint already has those steps), then continue from its weights
(pretrained=, experiment=continual_char_debian: fresh optimizer, warmup again) on B for --steps
steps in each setting of SETTINGS: same seed, schedule and steps. Every checkpoint, the pretrained one
included, is scored on the same held-out blocks: A's whole validation split and the first
--val-batches batches of B's. forgetting = val/loss on A after - before; gain = val/loss on B before
- after. Writes <out>/results.json and prints one Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import torch

from lmpretrain.config import compose_config  # noqa: E402

# name -> overrides of the continual run; replay = share of training blocks from A's train split
SETTINGS = {
    "no replay": ["data.replay.fraction=0.0"],
    "replay 0.2": ["data.replay.fraction=0.2"],
    "freeze emb + 2 of 4 blocks": ["data.replay.fraction=0.0", "freeze.embeddings=true", "freeze.layers=2"],
    "freeze emb + 2 blocks, replay 0.2": ["data.replay.fraction=0.2", "freeze.embeddings=true", "freeze.layers=2"],
}
QUIET = ["logger=csv", "callbacks.rich_progress_bar=null", "callbacks.samples=null", "callbacks.curves=null",
         "trainer.enable_progress_bar=false", "trainer.accelerator=cpu"]


def compose(overrides: list[str], out: Path):
    return compose_config("train", overrides, out)


def train_run(overrides: list[str], out: Path) -> tuple[Path, float]:
    """Train; (last.ckpt, wall seconds)."""
    from lmpretrain.train import train

    start = time.perf_counter()
    train(compose([*overrides, *QUIET], out))
    return out / "checkpoints" / "last.ckpt", time.perf_counter() - start


def val_loss(ckpt: Path, data: list[str], batches: int | None, out: Path) -> tuple[float, float]:
    """(val/loss of the checkpoint's weights on `data`'s validation split, share of <unk> tokens in it)."""
    import lightning as L

    from lmpretrain.train import build

    datamodule, module, _ = build(compose([*data, f"pretrained={ckpt}", "trainer.max_steps=0", *QUIET], out))
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=batches)
    (metrics,) = trainer.validate(module, datamodule=datamodule, verbose=False)
    return float(metrics["val/loss"]), datamodule.unk_fraction("val")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrain-steps", type=int, default=1500)
    p.add_argument("--steps", type=int, default=200, help="continual steps per setting")
    p.add_argument("--val-batches", type=int, default=150, help="B validation batches (12 x 64 tokens)")
    p.add_argument("--out", type=Path, default=REPO / "logs" / "bench_continual")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    if args.smoke:
        args.pretrain_steps, args.steps, args.val_batches, args.out = 6, 4, 4, args.out / "smoke"
    os.environ.setdefault("WANDB_MODE", "disabled")
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "2"))))
    t0 = time.perf_counter()

    pre_ckpt, pre_time = args.out / "pretrain" / "checkpoints" / "last.ckpt", 0.0
    cached = pre_ckpt.is_file() and torch.load(pre_ckpt, weights_only=True).get("global_step") == args.pretrain_steps
    if not cached:
        pre_ckpt, pre_time = train_run(
            ["experiment=shakespeare_char", f"trainer.max_steps={args.pretrain_steps}",
             f"trainer.val_check_interval={args.pretrain_steps}", "trainer.limit_val_batches=20",
             f"scheduler.warmup_steps={min(100, args.pretrain_steps // 10)}"], args.out / "pretrain")

    a_val = ["data=tinyshakespeare"]  # the whole validation split (the last 10% of the file)
    b_val = ["data=debian"]
    a_batches = 2 if args.smoke else None
    evals = args.out / "eval"
    before_a, _ = val_loss(pre_ckpt, a_val, a_batches, evals)
    before_b, unk_b = val_loss(pre_ckpt, b_val, args.val_batches, evals)
    rows = {"pretrained (before)": {"val_loss_a": before_a, "val_loss_b": before_b}}
    for name, overrides in SETTINGS.items():
        folder = args.out / name.replace(" ", "_").replace(",", "").replace("+", "plus")
        ckpt, seconds = train_run(
            ["experiment=continual_char_debian", f"pretrained={pre_ckpt}", f"trainer.max_steps={args.steps}",
             f"trainer.val_check_interval={args.steps}", "trainer.limit_val_batches=10",
             f"scheduler.warmup_steps={min(50, args.steps // 5)}", *overrides], folder)
        after_a, _ = val_loss(ckpt, a_val, a_batches, evals)
        after_b, _ = val_loss(ckpt, b_val, args.val_batches, evals)
        rows[name] = {"val_loss_a": after_a, "val_loss_b": after_b, "forgetting_a": after_a - before_a,
                      "gain_b": before_b - after_b, "train_seconds": seconds}
        print(f"{name}: A {after_a:.4f} ({after_a - before_a:+.4f})  B {after_b:.4f} ({before_b - after_b:+.4f} gain)  "
              f"{seconds:.0f} s", flush=True)

    results = {
        "date": date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared)",
        "torch": torch.__version__, "pretrain_steps": args.pretrain_steps, "pretrain_reused": cached,
        "pretrain_seconds": pre_time, "continual_steps": args.steps, "batch": "12 x 64 tokens",
        "val_a": "tinyshakespeare last 10% (whole split)", "val_b": f"debian hash 5%, first {args.val_batches} batches",
        "unk_fraction_b_val": unk_b, "total_seconds": time.perf_counter() - t0, "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\n{results['date']}, {results['machine']}, torch {results['torch']}: pretrain {args.pretrain_steps} steps"
          f"{' (reused)' if cached else f' ({pre_time:.0f} s)'}, continual {args.steps} steps each; "
          f"{unk_b:.2%} of B's validation tokens are <unk>\n")
    print("| setting | val/loss A (shakespeare) | forgetting (A after - before) | val/loss B (debian) | gain on B "
          "(before - after) | train time |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        if "gain_b" not in r:
            print(f"| {name} | {r['val_loss_a']:.4f} | - | {r['val_loss_b']:.4f} | - | - |")
        else:
            print(f"| {name} | {r['val_loss_a']:.4f} | {r['forgetting_a']:+.4f} | {r['val_loss_b']:.4f} | "
                  f"{r['gain_b']:+.4f} | {r['train_seconds']:.0f} s |")
    print(f"\ntotal {results['total_seconds'] / 60:.1f} min; results: {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
