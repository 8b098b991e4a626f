"""Does adversarial fine-tuning buy robustness? spam from scratch with adversarial=none, fgm, pgd,
freelb -- same seed, data order, steps and schedule -- each scored on the clean test split and on
the test split under seeded attacks (data/attacks.py) at two strengths, in one run.

    python bench/adversarial.py                  # the README table (~20 min on 2 shared cores)
    python bench/adversarial.py --steps 400      # longer fine-tuning
    python bench/adversarial.py --smoke          # 4 steps each: checks the plumbing only

The attacked texts are the same for every model (seed 0, one generator per text), and the score is
that of the final weights (no checkpoint selection, so the methods differ only in their loss).
Writes <out>/results.json and prints one Markdown table with the training wall time per method
(its cost: fgm about 2x, pgd (3 steps) about 4x, freelb (3 steps) about 3x a plain step).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import torch

from lmpretrain.config import compose_config
from lmpretrain.data.attacks import attack_texts
from lmpretrain.paths import data_root

METHODS = ("none", "fgm", "pgd", "freelb")
ATTACKS = (("char", 0.05), ("char", 0.15), ("word", 0.1), ("word", 0.3))
# bert_tiny from scratch on 64-token e-mail heads (subject + first lines), 16 a batch: small enough
# that the four runs fit the 2-core CPU this was measured on. (The spam files are sorted by label;
# training draws a permutation of the whole split, so early batches are not all ham.)
COMMON = ["task=spam", "trainer.accelerator=cpu", "logger=csv", "model.block_size=64", "data.batch_size=16",
          "optimizer.lr=1e-3", "evaluate_test=false"]


def compose(overrides: list[str], out: Path):
    return compose_config("finetune", overrides, out)


def read_test() -> list[dict]:
    with gzip.open(data_root() / "spam.test.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@torch.no_grad()
def accuracy(module, datamodule, texts: list[str], labels: list[str], batch_size: int = 64) -> float:
    module.eval()
    correct = 0
    for i in range(0, len(texts), batch_size):
        examples = [datamodule.encode({"text": t, "label": y}) for t, y in zip(texts[i:i + batch_size],
                                                                               labels[i:i + batch_size])]
        batch = datamodule.collate_fn(examples)
        correct += int((module(batch).argmax(-1) == batch["labels"]).sum())
    return correct / len(texts)


def applies(override: str, method: str) -> bool:
    """An `adversarial.<key>=` override is for the methods whose preset has that key (plain
    fine-tuning has none, fgm no alpha or steps); every other override is for all runs."""
    key = override.lstrip("+~").split("=", 1)[0]
    if not key.startswith("adversarial."):
        return True
    from omegaconf import OmegaConf

    return key.split(".", 1)[1] in OmegaConf.load(REPO / "conf" / "adversarial" / f"{method}.yaml").adversarial


def run_method(method: str, steps: int, out: Path, extra: list[str], test: list[dict]) -> dict:
    from lmpretrain.finetune import build
    from lmpretrain.run import fit_run

    extra = [o for o in extra if applies(o, method)]
    cfg = compose([*COMMON, f"adversarial={method}", f"trainer.max_steps={steps}",
                   f"trainer.val_check_interval={steps}", f"scheduler.warmup_steps={max(1, steps // 10)}",
                   *extra], out / method)
    run = build(cfg)
    start = time.time()
    metrics = fit_run(cfg, run)
    train_s = time.time() - start
    texts, labels = [r["text"] for r in test], [r["label"] for r in test]
    row = {"train_s": round(train_s, 1), "val/acc": metrics.get("val/acc"),
           "clean": accuracy(run.module, run.datamodule, texts, labels)}
    for kind, rate in ATTACKS:
        row[f"{kind}@{rate}"] = accuracy(run.module, run.datamodule, attack_texts(texts, kind, rate, seed=0), labels)
    return row


def table(results: dict, steps: int, n_test: int) -> str:
    cols = ["clean", *(f"{k}@{r}" for k, r in ATTACKS)]
    names = {"char": "char noise", "word": "word subst."}
    head = "| adversarial | " + " | ".join(c if c == "clean" else f"{names[c.split('@')[0]]} {c.split('@')[1]}"
                                        for c in cols) + " | train s |"
    lines = [head, "|" + "---|" * (len(cols) + 2)]
    for method, row in results.items():
        lines.append(f"| {method} | " + " | ".join(f"{row[c]:.3f}" for c in cols) + f" | {row['train_s']:.0f} |")
    return "\n".join(lines) + f"\n\ntest accuracy ({n_test} e-mails), {steps} steps"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--smoke", action="store_true", help="4 steps each, 64 test e-mails: plumbing only")
    p.add_argument("--out", type=Path, default=REPO / "logs" / "bench_adversarial")
    p.add_argument("overrides", nargs="*", help="extra config overrides for every run, e.g. adversarial.epsilon=0.5")
    args = p.parse_args()
    steps = 4 if args.smoke else args.steps
    test = read_test()[:64] if args.smoke else read_test()
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for method in args.methods.split(","):
        results[method] = run_method(method, steps, args.out, args.overrides, test)
        print(method, results[method], flush=True)
        (args.out / "results.json").write_text(json.dumps({"steps": steps, "overrides": args.overrides,
                                                           "results": results}, indent=2))
    print(table(results, steps, len(test)))


if __name__ == "__main__":
    main()
