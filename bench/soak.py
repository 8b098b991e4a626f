"""Soak: a 2-process DDP run on CPU killed with SIGKILL every few hundred steps and resumed from its
last.ckpt ends where an uninterrupted run ends (issue 11).

    python bench/soak.py                       # 3000 steps, a kill about every 300 (~10 min on 2 cores)
    python bench/soak.py --steps 400 --kill-every 120 --out /tmp/soak

Both runs use a tiny GPT on tinyshakespeare with checkpoints every `--save-every` steps. Each segment of
the killed run is its own run folder (seg0, seg1, ...) resumed with ckpt_path= the newest last.ckpt;
the kill lands at a random moment within the save interval that follows the segment's
`kill_every / save_every`-th save (so also mid-save and mid-step). Printed at the end: every step's train/loss and every val/loss the segments logged
compared with the uninterrupted run, and the final weights compared bit for bit.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch


def overrides(steps: int, save_every: int) -> list[str]:
    return ["debug=fast", "logger=csv", f"trainer.max_steps={steps}", f"scheduler.max_steps={steps}",
            f"trainer.val_check_interval={save_every}", "trainer.limit_val_batches=1", "trainer.accelerator=cpu",
            "trainer.devices=2", "strategy=ddp", "data.batch_size=4", "global_batch_size=8",
            "model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32",
            "callbacks.throughput=null"]


def start(args: list[str], run_dir: Path, ckpt: Path | None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "lmpretrain.train", *args, f"hydra.run.dir={run_dir}"]
    if ckpt is not None:
        cmd.append(f"ckpt_path={ckpt}")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(run_dir.with_suffix(".err"), "w"),
                            env=env, start_new_session=True)  # its own group: the kill takes both ranks


def global_step(ckpt: Path) -> int:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]


def metrics(run_dir: Path) -> tuple[dict[int, float], dict[int, float]]:
    train, val = {}, {}
    path = run_dir / "csv" / "metrics.csv"
    if path.is_file():
        for row in csv.DictReader(path.open()):
            if row.get("train/loss"):
                train[int(row["step"])] = float(row["train/loss"])
            if row.get("val/loss"):
                val[int(row["step"])] = float(row["val/loss"])
    return train, val


def soak(out: Path, steps: int, kill_every: int, save_every: int, seed: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    args, rng = overrides(steps, save_every), random.Random(seed)
    t0 = time.time()
    ref = start(args, out / "ref", None)
    if ref.wait() != 0:
        raise SystemExit(f"uninterrupted run failed: {(out / 'ref.err').read_text()[-2000:]}")
    ref_seconds = time.time() - t0

    kills, seg, ckpt = [], 0, None
    while True:
        run_dir = out / f"seg{seg}"
        proc = start(args, run_dir, ckpt)
        last, saves, mtime = run_dir / "checkpoints" / "last.ckpt", [], None
        saves_before_kill = max(2, kill_every // save_every)
        while proc.poll() is None:
            m = last.stat().st_mtime_ns if last.exists() else None
            if m != mtime and m is not None:
                saves.append(time.time())
            mtime = m
            if len(saves) >= saves_before_kill:
                time.sleep(rng.uniform(0, saves[-1] - saves[-2]))  # anywhere in the next interval, saves included
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    kills.append(global_step(last) if last.exists() else None)
                break
            time.sleep(0.02)
        proc.wait()
        if proc.returncode == 0:
            break
        if proc.returncode != -signal.SIGKILL:
            raise SystemExit(f"segment {seg} failed ({proc.returncode}): {run_dir.with_suffix('.err').read_text()[-2000:]}")
        if last.exists():
            ckpt = last
        if ckpt is not None and global_step(ckpt) >= steps:  # killed after its final save, while exiting
            break
        seg += 1

    ref_train, ref_val = metrics(out / "ref")
    compared, mismatched, killed_val = 0, [], {}
    for s in range(seg + 1):
        train, val = metrics(out / f"seg{s}")
        killed_val.update(val)
        for kind, mine, theirs in (("train", train, ref_train), ("val", val, ref_val)):
            for step, loss in mine.items():
                compared += 1
                if theirs.get(step) != loss:
                    mismatched.append((kind, s, step, loss, theirs.get(step)))
    final = torch.load(ckpt if proc.returncode else out / f"seg{seg}" / "checkpoints" / "last.ckpt", weights_only=True)
    reference = torch.load(out / "ref" / "checkpoints" / "last.ckpt", weights_only=True)
    same_weights = final["state_dict"].keys() == reference["state_dict"].keys() and all(
        torch.equal(final["state_dict"][k], reference["state_dict"][k]) for k in reference["state_dict"])
    return {
        "steps": steps, "processes": 2, "kills": len(kills), "killed_after_checkpoint_step": kills,
        "segments": seg + 1, "losses_compared": compared, "losses_different": len(mismatched),
        "first_differences": mismatched[:5], "final_step": final["global_step"],
        "final_weights_identical": bool(same_weights and final["global_step"] == reference["global_step"]),
        "final_val_loss": {"killed": killed_val.get(max(ref_val)), "uninterrupted": ref_val[max(ref_val)]},
        "uninterrupted_seconds": round(ref_seconds, 1), "total_seconds": round(time.time() - t0, 1),
        "same": not mismatched and bool(same_weights),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--kill-every", type=int, default=300)
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("/tmp/lmpretrain-soak"))
    a = p.parse_args()
    result = soak(a.out, a.steps, a.kill_every, a.save_every, a.seed)
    print(json.dumps(result, indent=1))
    print(f"soak: {result['kills']} kills -9 of a 2-process DDP run over {a.steps} steps: final losses "
          f"{'EQUAL' if result['same'] else 'DIFFERENT'} to the uninterrupted run "
          f"({result['losses_compared']} losses compared, final weights "
          f"{'bit-identical' if result['final_weights_identical'] else 'different'})")
    sys.exit(0 if result["same"] else 1)


if __name__ == "__main__":
    main()
