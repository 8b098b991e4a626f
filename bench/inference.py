"""Inference speed of fp32, dynamic int8 and ONNX Runtime, measured in one run on this machine.

    python bench/inference.py [--threads 2] [--repeats 5] [--sizes tiny,small]

Classification (a SequenceClassificationModule on bert_tiny / bert_small): latency of one sequence
of 128 tokens and throughput at batch 32 x 128. Generation (GPT on gpt_tiny / gpt_small): greedy
new tokens/s for one prompt of 16 tokens + 48 new; fp32 and int8 decode with the KV cache
(`models/generation.py`), ONNX Runtime has no cache (the exported graph is the full forward, rerun
on the whole prefix each step), so `fp32 no cache` is printed too, the like-for-like baseline.
Random weights (speed does not depend on them), vocabulary 8192. Prints one table, ratios vs fp32.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

# Before torch loads OpenMP: threads that wait for work sleep instead of spinning. On a machine shared
# with other jobs a spinning thread holds a core the other thread needs; here that made fp32 with 2
# threads 16x slower than with 1 (342 vs 21 ms), which is contention, not the model.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

from lmpretrain.export.onnx import export_onnx, graph_for, ort_session
from lmpretrain.export.quantize import quantize_int8, state_dict_bytes
from lmpretrain.export.source import Source
from lmpretrain.models import GPT, GPTConfig
from lmpretrain.models.generation import generate
from lmpretrain.tasks.classification import SequenceClassificationModule

VOCAB = 8192
SIZES = {  # conf/model presets (vocabulary fixed at VOCAB, dropout off)
    "tiny": ({"n_layer": 2, "n_head": 2, "n_embd": 128, "block_size": 128},   # bert_tiny
             {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64}),   # gpt_tiny
    "small": ({"n_layer": 4, "n_head": 8, "n_embd": 512, "block_size": 512},  # bert_small
              {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256}),  # gpt_small
}
SEQ, BATCH, PROMPT, NEW = 128, 32, 16, 48


def timed(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def classification(size: dict, repeats: int, threads: int, tmp: Path) -> dict[str, dict[str, float]]:
    torch.manual_seed(0)
    module = SequenceClassificationModule(model={"arch": "bert", "vocab_size": VOCAB, "dropout": 0.0, **size},
                                          labels=["neg", "pos"]).eval()
    src = Source(module.network, {"arch": "bert", **size}, None, module)
    int8 = quantize_int8(module.network)
    graphs = {"fp32": graph_for(src), "int8": graph_for(src, int8)}
    export_onnx(graphs["fp32"], tmp / "cls.onnx")
    session = ort_session(tmp / "cls.onnx", threads)
    one, many = graphs["fp32"].example(1, SEQ), graphs["fp32"].example(BATCH, SEQ)

    def runner(name: str):
        if name == "onnxruntime":
            return lambda x: session.run(None, {"input_ids": x[0].numpy(), "attention_mask": x[1].numpy()})
        return lambda x: graphs[name](*x)

    rows = {}
    with torch.no_grad():
        for name in ("fp32", "int8", "onnxruntime"):
            run = runner(name)
            latency = timed(lambda run=run: run(one), repeats)
            batch_s = timed(lambda run=run: run(many), max(2, repeats // 2))
            rows[name] = {"latency_ms": 1e3 * latency, "seq_per_s": BATCH / batch_s}
    rows["fp32"]["size_mb"] = state_dict_bytes(module.network) / 1e6
    rows["int8"]["size_mb"] = state_dict_bytes(int8) / 1e6
    rows["onnxruntime"]["size_mb"] = (tmp / "cls.onnx").stat().st_size / 1e6
    return rows


def ort_greedy(session, prompt: torch.Tensor, new: int) -> torch.Tensor:
    """Greedy decoding with the exported full forward: the whole prefix each step (no cache)."""
    ids = prompt.numpy()
    for _ in range(new):
        logits = session.run(None, {"input_ids": ids})[0]  # (B, T, V)
        ids = np.concatenate([ids, logits[:, -1].argmax(-1)[:, None]], axis=1)
    return torch.from_numpy(ids[:, prompt.size(1):])


def generation(size: dict, repeats: int, threads: int, tmp: Path) -> dict[str, dict[str, float]]:
    torch.manual_seed(0)
    net = GPT(GPTConfig(vocab_size=VOCAB, dropout=0.0, **size)).eval()
    q = quantize_int8(net)
    export_onnx(graph_for(Source(net, {"arch": "gpt", **size}, None)), tmp / "gpt.onnx")
    session = ort_session(tmp / "gpt.onnx", threads)
    prompt = torch.randint(0, VOCAB, (1, PROMPT), generator=torch.Generator().manual_seed(1))
    runners = {
        "fp32": lambda: generate(net, prompt, max_new_tokens=NEW, strategy="greedy"),
        "fp32 no cache": lambda: generate(net, prompt, max_new_tokens=NEW, strategy="greedy", use_cache=False),
        "int8": lambda: generate(q, prompt, max_new_tokens=NEW, strategy="greedy"),
        "onnxruntime": lambda: ort_greedy(session, prompt, NEW),
    }
    rows, tokens = {}, {}
    with torch.no_grad():
        for name, run in runners.items():
            tokens[name] = run()
            # all `repeats`: a median of 3 let gpt_small's int8/fp32 ratio swing 0.9x-1.4x between runs
            rows[name] = {"tokens_per_s": NEW / timed(run, repeats)}
    for name, row in rows.items():  # the same greedy tokens as fp32 (int8 may drift: its logits differ)
        row["same_tokens"] = float(torch.equal(tokens[name], tokens["fp32"]))
    rows["fp32"]["size_mb"] = state_dict_bytes(net) / 1e6
    rows["int8"]["size_mb"] = state_dict_bytes(q) / 1e6
    rows["onnxruntime"]["size_mb"] = (tmp / "gpt.onnx").stat().st_size / 1e6
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--sizes", default="tiny,small")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {date.today()} {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} threads (OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}), {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the start")
    header = ("| model | runtime | cls latency b1x128 (ms) | ratio | cls throughput b32x128 (seq/s) | ratio "
              "| gen greedy (new tok/s) | ratio | size (MB) |")
    lines = [header, "|---" * 9 + "|"]
    with tempfile.TemporaryDirectory() as d:
        for size in args.sizes.split(","):
            cls_size, gpt_size = SIZES[size]
            cls = classification(cls_size, args.repeats, args.threads, Path(d))
            gen = generation(gpt_size, args.repeats, args.threads, Path(d))
            for name in ("fp32", "int8", "onnxruntime", "fp32 no cache"):
                c, g = cls.get(name), gen[name]
                cells = ["-"] * 4 if c is None else [
                    f"{c['latency_ms']:.2f}", f"{cls['fp32']['latency_ms'] / c['latency_ms']:.2f}x",
                    f"{c['seq_per_s']:.0f}", f"{c['seq_per_s'] / cls['fp32']['seq_per_s']:.2f}x"]
                same = "" if g["same_tokens"] else " (other tokens)"
                gen_cells = [f"{g['tokens_per_s']:.0f}{same}", f"{g['tokens_per_s'] / gen['fp32']['tokens_per_s']:.2f}x"]
                sizes = "-" if c is None else f"cls {c['size_mb']:.1f} / gen {g['size_mb']:.1f}"
                lines.append(f"| bert_{size} / gpt_{size} | {name} | " + " | ".join(cells + gen_cells) + f" | {sizes} |")
            print("\n".join(lines[-4:]), flush=True)
    print("\n".join(lines))
    print(f"load average {os.getloadavg()[0]:.2f} at the end (other processes on these CPUs slow every row)")


if __name__ == "__main__":
    main()
