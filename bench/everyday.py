"""The whole command as a user runs it, against a minimal script of the same run (nanoGPT's shape).

    python bench/everyday.py [--steps 1000] [--repeats 2]

(a) `python -m lmpretrain.train experiment=shakespeare_char trainer.max_steps=N` (its defaults:
csv + wandb offline loggers, checkpoints, validation every 250 steps over the whole validation
split), and (b) `bench/everyday.py --bare`: one file in nanoGPT's style with the same model
(`lmpretrain.models.GPT`, 4 x 4 x 128, context 64, batch 12, no biases as in nanoGPT), AdamW, warmup + cosine schedule and
gradient clipping; it reads tiny-shakespeare into memory, samples random windows like nanoGPT,
evaluates the whole validation split every 250 steps with the same batch (32 blocks) and saves a checkpoint
after each evaluation. Runs alternate (a, b, a, b, ...); per run: wall time of the whole command,
peak RSS (the process's maxrss), steady-state training tokens/s (median over the run's logging
windows), and the wall time of a 1-step run (start-up: imports, data, model, first step, exit).
Prints each figure and lmpretrain / bare. Run it from the environment a user trains in
(`pip install -e .`): it says whether optional packages that slow every start are installed.

`--nanogpt PATH` adds (c), nanoGPT itself: PATH is a clone of https://github.com/karpathy/nanoGPT
(nothing of it is in this repository). Its `train.py`, `model.py`, `configurator.py`, the
shakespeare_char config and data script are copied into a scratch folder (the clone is left as it
is), `prepare.py` runs there on tiny-shakespeare from the data root, and its README's CPU command runs
cut to `--steps` iterations (`--device=cpu --compile=False --eval_iters=20 --log_interval=1
--block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --dropout=0.0`): the run issue 13
measured. Its tokens/s is the median over 10-iteration windows of the times it prints, the
evaluation iterations left out (as for (a) and (b)); its val/loss is nanoGPT's own estimate from 20
random batches, not the whole split.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def bare(steps: int, out: Path, eval_interval: int = 250, eval_batch: int = 32) -> None:
    """The minimal script (b). Prints one JSON line with its median tokens/s."""
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(REPO / "src"))
    from lmpretrain.clock import seconds_since_process_start
    from lmpretrain.models import GPT, GPTConfig
    from lmpretrain.paths import data_root

    torch.manual_seed(1337)
    text = (data_root() / "tinyshakespeare.txt").read_text()
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    n = int(0.9 * len(data))
    train, val = data[:n], data[n:]
    block, batch = 64, 12
    model = GPT(GPTConfig(vocab_size=len(chars), block_size=block, n_layer=4, n_head=4, n_embd=128, dropout=0.0,
                          bias=False))  # nanoGPT's train.py: bias = False
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.99))

    def lr_at(it: int) -> float:
        if it < 100:
            return 1e-3 * (it + 1) / 101
        ratio = (it - 100) / max(1, steps - 100)
        return 1e-4 + 0.5 * (1 + math.cos(math.pi * ratio)) * (1e-3 - 1e-4)

    @torch.no_grad()
    def evaluate() -> float:
        model.eval()
        starts = torch.arange(0, len(val) - block - 1, block)
        total, count = 0.0, 0
        for i in range(0, len(starts), eval_batch):
            s = starts[i : i + eval_batch]
            x = torch.stack([val[j : j + block] for j in s])
            y = torch.stack([val[j + 1 : j + 1 + block] for j in s])
            loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="sum")
            total, count = total + float(loss), count + y.numel()
        model.train()
        return total / count

    rates, window_start, first_step, val_loss = [], time.perf_counter(), None, None
    for it in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(it)
        ix = torch.randint(len(train) - block - 1, (batch,))
        x = torch.stack([train[i : i + block] for i in ix])
        y = torch.stack([train[i + 1 : i + 1 + block] for i in ix])
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if first_step is None:
            first_step = seconds_since_process_start()  # as lmpretrain's train/startup_s
        if (it + 1) % 10 == 0:
            now = time.perf_counter()
            rates.append(10 * batch * block / (now - window_start))
            window_start = now
        if (it + 1) % eval_interval == 0:
            val_loss = evaluate()
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": it + 1}, out / "ckpt.pt")
            window_start = time.perf_counter()
    print(json.dumps({"tokens_per_sec": statistics.median(rates) if rates else None, "val_loss": val_loss,
                      "first_step_s": first_step}))


NANOGPT_FILES = ("train.py", "model.py", "configurator.py", "config/train_shakespeare_char.py",
                 "data/shakespeare_char/prepare.py")
NANOGPT_CPU = ["--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
               "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--dropout=0.0"]


def nanogpt_copy(clone: Path, work: Path) -> Path:
    """nanoGPT's files in `work/nanogpt` with tiny-shakespeare prepared as its README says."""
    import shutil

    sys.path.insert(0, str(REPO / "src"))
    from lmpretrain.paths import data_root

    folder = work / "nanogpt"
    for name in NANOGPT_FILES:
        if not (clone / name).is_file():
            raise SystemExit(f"error: --nanogpt {clone} has no {name}; "
                             "give a clone of https://github.com/karpathy/nanoGPT")
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(clone / name, folder / name)
    shutil.copy(data_root() / "tinyshakespeare.txt", folder / "data" / "shakespeare_char" / "input.txt")  # no download
    run([sys.executable, "data/shakespeare_char/prepare.py"], folder)
    return folder


def nanogpt_rates(text: str, tokens_per_iter: int = 12 * 64) -> list[float]:
    """Tokens/s of each 10-iteration window of nanoGPT's output (`iter N: loss L, time Tms, ...`),
    windows restarted at each evaluation (`step N: train loss ...`: its time falls in the iteration
    that runs it) and at iteration 0, as the bare loop restarts its window after evaluating."""
    iters = re.findall(r"^iter (\d+): loss [\d.]+, time ([\d.]+)ms", text, re.MULTILINE)
    times = {int(it): float(ms) for it, ms in iters}
    evals = {int(m) for m in re.findall(r"^step (\d+): train loss", text, re.MULTILINE)}
    rates, window = [], []
    for it in sorted(times):
        if it in evals or it == 0:
            window = []
            continue
        window.append(times[it])
        if len(window) == 10:
            rates.append(10 * tokens_per_iter / (sum(window) / 1000))
            window = []
    return rates


def nanogpt(steps: int, work: Path, folder: Path) -> dict:
    out = work / f"nanogpt_out_{time.time_ns()}"
    cmd = [sys.executable, "train.py", "config/train_shakespeare_char.py", *NANOGPT_CPU, f"--max_iters={steps}",
           f"--lr_decay_iters={steps}", f"--out_dir={out}"]
    wall, rss, text = run(cmd, folder)
    rates = nanogpt_rates(text)
    val = re.findall(r"val loss ([\d.]+)", text)
    return {"wall_s": wall, "rss_mb": rss, "tokens_per_sec": statistics.median(rates) if rates else None,
            "val_loss": float(val[-1]) if val else None, "first_step_s": None}


def run(cmd: list[str], cwd: Path) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) of the command's process, its stdout."""
    start = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env={**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")})
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed:\n{out[-3000:]}")
    return wall, usage.ru_maxrss / 1024, out


def ours(steps: int, work: Path) -> dict:
    folder = work / f"ours_{time.time_ns()}"
    cmd = [sys.executable, "-m", "lmpretrain.train", "experiment=shakespeare_char", f"trainer.max_steps={steps}",
           f"hydra.run.dir={folder}"]
    wall, rss, _ = run(cmd, REPO)
    metrics = folder / "csv" / "metrics.csv"
    rows = list(csv.DictReader(metrics.read_text().splitlines())) if metrics.is_file() else []  # 1 step: no log
    rates = [float(r["train/tokens_per_sec"]) for r in rows if r.get("train/tokens_per_sec")]
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    startup = [float(r["train/startup_s"]) for r in rows if r.get("train/startup_s")]
    return {"wall_s": wall, "rss_mb": rss, "tokens_per_sec": statistics.median(rates) if rates else None,
            "val_loss": val[-1] if val else None, "first_step_s": startup[0] if startup else None}


def theirs(steps: int, work: Path) -> dict:
    folder = work / f"bare_{time.time_ns()}"
    folder.mkdir()
    wall, rss, out = run([sys.executable, str(Path(__file__).resolve()), "--bare", "--steps", str(steps),
                          "--out", str(folder)], REPO)
    result = json.loads(out.strip().splitlines()[-1])
    return {"wall_s": wall, "rss_mb": rss, "tokens_per_sec": result["tokens_per_sec"], "val_loss": result["val_loss"],
            "first_step_s": result["first_step_s"]}


def ratio(a: float, b: float) -> str:
    """a / b, or "-" where a run had no figure (e.g. no complete 10-step window in a short run)."""
    return f"{a / b:.2f}" if b and math.isfinite(a) and math.isfinite(b) else "-"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--nanogpt", type=Path, help="a clone of karpathy/nanoGPT: run its train.py too (c)")
    parser.add_argument("--results", type=Path, default=REPO / "logs" / "bench_everyday" / "results.json",
                        help="where the runs' figures are written (JSON)")
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        bare(args.steps, args.out)
        return
    # torchmetrics (imported by Lightning) imports these at start-up whenever they are installed: a dev
    # environment (scikit-learn pulls scipy) starts slower and larger than `pip install -e .` alone.
    import importlib.util

    extras = [m for m in ("scipy", "transformers") if importlib.util.find_spec(m)]
    print(f"installed, imported by torchmetrics at every start: {', '.join(extras) or 'none (a plain install)'}",
          flush=True)
    results: dict[str, list[dict]] = {"lmpretrain": [], "bare": [], "lmpretrain_1step": [], "bare_1step": []}
    if args.nanogpt:
        results["nanogpt"] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clone = nanogpt_copy(args.nanogpt.expanduser().resolve(), work) if args.nanogpt else None
        for r in range(args.repeats):
            for name, fn in (("lmpretrain", ours), ("bare", theirs)):
                results[name].append(fn(args.steps, work))
                results[f"{name}_1step"].append(fn(1, work))
                print(f"run {r + 1} {name}: {results[name][-1]}; 1 step: {results[f'{name}_1step'][-1]['wall_s']:.1f} s",
                      flush=True)
            if clone is not None:
                results["nanogpt"].append(nanogpt(args.steps, work, clone))
                print(f"run {r + 1} nanogpt: {results['nanogpt'][-1]}", flush=True)
    best = {k: {"wall_s": min(x["wall_s"] for x in v), "rss_mb": min(x["rss_mb"] for x in v),
                "tokens_per_sec": max(x["tokens_per_sec"] or 0 for x in v), "val_loss": v[-1]["val_loss"] or math.nan,
                "first_step_s": min(x["first_step_s"] or math.inf for x in v)}
            for k, v in results.items()}
    print(f"\n{args.steps} steps, best of {args.repeats} alternating runs")
    others = ["bare", "nanogpt"] if args.nanogpt else ["bare"]
    print(f"{'':28s}{'lmpretrain':>12s}" + "".join(f"{o:>12s}{'ratio':>8s}" for o in others))
    for key, label in [("tokens_per_sec", "training tokens/s (median)"), ("wall_s", "wall time of the run (s)"),
                       ("rss_mb", "peak RSS (MB)"), ("val_loss", "final val/loss")]:
        a = best["lmpretrain"][key]
        print(f"{label:28s}{a:12.1f}" + "".join(f"{best[o][key]:12.1f}{ratio(a, best[o][key]):>8s}" for o in others))
    if args.nanogpt:
        print("(nanoGPT's val/loss is its estimate from 20 random batches; the others score the whole split)")
    for key, label in [("first_step_s", "command to first step (s)"), ("wall_s", "a 1-step run (s)")]:
        a, b = best["lmpretrain_1step"][key], best["bare_1step"][key]
        print(f"{label:28s}{a:12.1f}{b:12.1f}{ratio(a, b):>8s}")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps({"runs": results, "best": best}, indent=1))


if __name__ == "__main__":
    main()
