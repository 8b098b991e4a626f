"""Training curves as PNGs: one run's, written into its folder at the end (`callbacks.curves`), or
several runs overlaid (a sweep, pretrained vs scratch):

    python -m lmpretrain.plot RUN_DIR [RUN_DIR ...] [--out runs.png]

A RUN_DIR is a run folder (its `curves.json`, else its CSV log `csv/metrics.csv`) or a multirun
folder, whose job folders (0/, 1/, ...) each count as a run, labelled by their Hydra overrides.
Panels: loss (train and val), perplexity, learning rate, tokens/s, gradient norm, then every other
`val/*` score (accuracy, F1, ...) that a run logged.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from datetime import datetime
from pathlib import Path

Curves = dict[str, list[tuple[int, float]]]  # metric -> [(step, value)], steps ascending

# Panel title -> the metrics drawn in it (lr: every `lr-*` column of LearningRateMonitor).
PANELS = {
    "loss": ("train/loss", "val/loss"),
    "perplexity": ("val/ppl",),
    "learning rate": ("lr",),
    "tokens/s": ("train/tokens_per_sec",),
    "gradient norm": ("train/grad_norm",),
}
CURVES_FILE = "curves.json"


def read_run(run_dir: Path) -> Curves:
    """A run's curves: `curves.json` (written by the curves callback), else the CSV logger's file."""
    if (run_dir / CURVES_FILE).is_file():
        raw = json.loads((run_dir / CURVES_FILE).read_text())
        return {k: [(int(s), float(v)) for s, v in pts] for k, pts in raw.items()}
    return read_csv_metrics(run_dir)


def read_csv_metrics(run_dir: Path) -> Curves:
    """The CSV logger's `csv/metrics.csv` of a run as curves ({} when there is none)."""
    metrics = Path(run_dir) / "csv" / "metrics.csv"
    if not metrics.is_file():
        return {}
    curves: Curves = {}
    with open(metrics, newline="") as f:
        for row in csv.DictReader(f):
            step = int(float(row.get("step") or 0))
            for key, value in row.items():
                if key in ("step", "epoch") or value in ("", None):
                    continue
                curves.setdefault(key, []).append((step, float(value)))
    return curves


def _label(run_dir: Path) -> str:
    overrides = run_dir / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        lines = [ln.strip()[2:] for ln in overrides.read_text().splitlines() if ln.strip().startswith("- ")]
        short = [ln if len(ln) <= 40 else ln[:18] + "…" + ln[-18:] for ln in lines]
        if short:
            return " ".join(short)
    return run_dir.name or str(run_dir)


def find_runs(paths: list[Path]) -> list[tuple[str, Curves]]:
    """(label, curves) per run; a multirun folder contributes each of its job folders."""
    runs = []
    for path in paths:
        candidates = [path] if read_run(path) else sorted(
            (p for p in path.iterdir() if p.is_dir() and read_run(p)),
            key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))
        runs.extend((_label(p), read_run(p)) for p in candidates)
    return runs


def _panels(runs: list[tuple[str, Curves]]) -> list[tuple[str, list[str]]]:
    keys = {k for _, curves in runs for k in curves}
    panels = []
    for title, wanted in PANELS.items():
        found = sorted(k for k in keys if k in wanted or ("lr" in wanted and k.startswith("lr-")))
        if found:
            panels.append((title, found))
    drawn = {k for _, ks in panels for k in ks}
    for k in sorted(keys):  # task scores: val/acc, val/f1, val/exact_match, ...
        if k.startswith("val/") and k not in drawn:
            panels.append((k, [k]))
    return panels


def plot_runs(runs: list[tuple[str, Curves]], out: Path, title: str | None = None) -> Path:
    """One figure, a panel per quantity, a line per run (and per metric within a panel)."""
    # A bare Figure, not pyplot: no GUI backend is chosen or imported (every run ends here, and
    # pyplot's import is ~0.4 s of it), and nothing global is left for the caller to close.
    import matplotlib
    from matplotlib.figure import Figure

    panels = _panels(runs)
    if not panels:
        raise ValueError("no logged metrics to plot")
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (name, keys) in zip(axes.flat, panels):
        for i, (label, curves) in enumerate(runs):
            for j, key in enumerate(keys):
                pts = curves.get(key)
                if not pts:
                    continue
                steps, values = zip(*pts)
                parts = [label] if len(runs) > 1 else []
                parts += [key] if len(keys) > 1 else []
                ax.plot(steps, values, color=colors[i % len(colors)], linestyle=["-", "--", ":", "-."][j % 4],
                        marker="o" if len(pts) < 12 else None, markersize=3, label=" ".join(parts) or None)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmpretrain.plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run or multirun folders")
    parser.add_argument("--out", type=Path, default=None,
                        help="PNG to write (default: logs/plot/<date>_<time>.png)")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.runs if not p.is_dir()]
    if missing:
        print(f"error: not a folder: {', '.join(missing)}; pass run folders such as logs/train/<date>/<time>",
              file=sys.stderr)
        return 2
    runs = find_runs(args.runs)
    if not runs:
        print(f"error: no curves.json or csv/metrics.csv in {', '.join(map(str, args.runs))} (or their job "
              f"folders); runs need logger=csv or callbacks.curves", file=sys.stderr)
        return 2
    out = args.out or Path("logs") / "plot" / f"{datetime.now():%Y-%m-%d_%H-%M-%S}.png"
    if out.exists():
        print(f"error: {out} exists; pass another --out", file=sys.stderr)
        return 2
    plot_runs(runs, out)
    print(f"{len(runs)} run(s) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
