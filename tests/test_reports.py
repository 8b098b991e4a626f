"""Sample generations during pretraining and the per-class report of a classification run."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from conftest import make_cfg
from lmpretrain.callbacks import ClassificationReport
from lmpretrain.finetune import finetune
from lmpretrain.train import train

QUIET = ["trainer.enable_progress_bar=false", "callbacks.rich_progress_bar=null"]


@pytest.mark.slow
def test_samples_every_n_steps_to_file_and_wandb_table(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = make_cfg(tmp_path, ["trainer.max_steps=4", "trainer.val_check_interval=4", "trainer.limit_val_batches=1",
                              "trainer.num_sanity_val_steps=0", "logger=[wandb]", *QUIET,
                              "callbacks.samples.every_n_steps=2", "callbacks.samples.max_new_tokens=16",
                              "callbacks.samples.prompts=[ROMEO:,JULIET:]"])
    train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [(r["step"], r["prompt"]) for r in rows] == [(2, "ROMEO:"), (2, "JULIET:"), (4, "ROMEO:"), (4, "JULIET:")]
    assert all(len(r["text"]) >= 16 for r in rows)  # char tokenizer: 16 new tokens, each >= 1 character
    tables = list((tmp_path / "wandb").glob("offline-run-*/files/media/table/samples_*.table.json"))
    assert len(tables) == 2  # one per logging step, the second holding all 4 rows
    biggest = max(tables, key=lambda p: len(json.loads(p.read_text())["data"]))
    assert [row[2] for row in json.loads(biggest.read_text())["data"]] == [r["text"] for r in rows]


def test_per_class_report_from_a_confusion_matrix(tmp_path):
    matrix = torch.tensor([[5, 1, 0], [2, 3, 0], [0, 0, 0]])  # the third class never occurs nor is predicted
    rows = ClassificationReport(str(tmp_path)).write(matrix, ["a", "b", "c"])
    assert rows[0] == {"label": "a", "precision": round(5 / 7, 4), "recall": round(5 / 6, 4),
                       "f1": round(2 * (5 / 7) * (5 / 6) / (5 / 7 + 5 / 6), 4), "support": 6}
    assert rows[2]["f1"] == 0 and rows[2]["support"] == 0
    lines = (tmp_path / "confusion_matrix.csv").read_text().splitlines()
    assert lines[0] == "true \\ predicted,a,b,c" and lines[2] == "b,2,3,0"


@pytest.mark.slow
def test_classification_report_agrees_with_the_test_metrics(tmp_path):
    """Per-class F1 averaged = the logged macro test/f1; the matrix's trace / total = test/acc."""
    metrics = finetune(make_cfg(tmp_path, ["task=spam", "debug=fast", "trainer.max_steps=10", *QUIET],
                                config_name="finetune"))
    with open(tmp_path / "per_class.csv") as f:
        rows = list(csv.DictReader(f))
    with open(tmp_path / "confusion_matrix.csv") as f:
        matrix = [[int(x) for x in row[1:]] for row in list(csv.reader(f))[1:]]
    total = sum(map(sum, matrix))
    assert total == sum(int(r["support"]) for r in rows) > 100
    assert sum(matrix[i][i] for i in range(len(matrix))) / total == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert sum(float(r["f1"]) for r in rows) / len(rows) == pytest.approx(metrics["test/f1"], abs=1e-3)
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 1000
