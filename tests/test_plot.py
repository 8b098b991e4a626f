"""Training curves: written into each run's folder at the end, and several runs overlaid by
`python -m lmpretrain.plot`."""

from __future__ import annotations

import json
import math

import pytest

from conftest import make_cfg
from lmpretrain import plot
from lmpretrain.optim.schedules import cosine_with_warmup
from lmpretrain.train import train

PNG = b"\x89PNG\r\n\x1a\n"


def test_run_writes_its_curves(tmp_path):
    cfg = make_cfg(tmp_path, ["debug=fast", "trainer.max_steps=6", "trainer.log_every_n_steps=2",
                              "trainer.val_check_interval=3", "scheduler.warmup_steps=4",
                              "callbacks.curves.output_dir=" + str(tmp_path)])
    train(cfg)
    curves = json.loads((tmp_path / "curves.json").read_text())
    assert [s for s, _ in curves["train/loss"]] == [2, 4, 6]
    assert [s for s, _ in curves["val/loss"]] == [3, 6]
    # the lr of the update after `step` optimizer steps: the schedule's value at that step
    expected = {s: cosine_with_warmup(s, lr=1e-3, warmup_steps=4, max_steps=6, min_lr=1e-4) for s in (2, 4, 6)}
    assert dict(curves["lr"]) == pytest.approx(expected)
    assert expected[2] == pytest.approx(6e-4) and expected[6] == pytest.approx(1e-4)
    assert all(v > 0 and math.isfinite(v) for _, v in curves["train/grad_norm"])
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG


def _fake_run(folder, losses, overrides=None):
    folder.mkdir(parents=True)
    (folder / "curves.json").write_text(json.dumps({"train/loss": [[i + 1, v] for i, v in enumerate(losses)],
                                                    "val/acc": [[len(losses), 0.5]]}))
    if overrides is not None:
        (folder / ".hydra").mkdir()
        (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))


def test_plot_overlays_runs_and_sweep_jobs(tmp_path):
    _fake_run(tmp_path / "single", [3.0, 2.0])
    sweep = tmp_path / "sweep"
    _fake_run(sweep / "0", [3.0, 2.5], ["optimizer.lr=1e-3"])
    _fake_run(sweep / "1", [3.0, 1.5], ["optimizer.lr=3e-3"])
    (sweep / "multirun.yaml").write_text("x: 1\n")
    runs = plot.find_runs([tmp_path / "single", sweep])
    assert [label for label, _ in runs] == ["single", "optimizer.lr=1e-3", "optimizer.lr=3e-3"]
    assert [t for t, _ in plot._panels(runs)] == ["loss", "val/acc"]
    out = tmp_path / "fig.png"
    assert plot.main([str(tmp_path / "single"), str(sweep), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG


def test_plot_reads_the_csv_log(tmp_path):
    run = tmp_path / "run"
    (run / "csv").mkdir(parents=True)
    (run / "csv" / "metrics.csv").write_text("epoch,lr-AdamW,step,train/loss,val/loss\n,0.001,1,,\n0,,1,4.0,\n0,,1,,3.9\n")
    curves = plot.read_run(run)
    assert curves == {"lr-AdamW": [(1, 0.001)], "train/loss": [(1, 4.0)], "val/loss": [(1, 3.9)]}


def test_plot_errors_are_one_line(tmp_path, capsys):
    assert plot.main([str(tmp_path / "nope")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert plot.main([str(tmp_path)]) == 2
    assert "no curves.json" in capsys.readouterr().err
    _fake_run(tmp_path / "r", [1.0])
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"user's file")
    assert plot.main([str(tmp_path / "r"), "--out", str(mine)]) == 2
    assert mine.read_bytes() == b"user's file"  # never overwritten
