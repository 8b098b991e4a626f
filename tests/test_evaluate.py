"""`evaluate`: intrinsic scores equal the checkpoint's own validation, every task is fine-tuned and
tested per checkpoint (and from scratch), and the report holds every score in json, markdown and plots."""

import csv
import json

import pytest

from conftest import make_cfg
from lmpretrain.checkpoints import load_module
from lmpretrain.errors import ConfigError
from lmpretrain.evaluate import evaluate
from lmpretrain.objectives import CausalLMModule, MaskedLMModule
from lmpretrain.train import train

FAST = ["debug=fast", "trainer.accelerator=cpu"]
SHAKESPEARE_VAL = ("{files: [tinyshakespeare.txt], split: tail, val_fraction: 0.1, block_size: 64, batch_size: 12,"
                   " max_batches: 2}")


@pytest.fixture(scope="module")
def gpt_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpt")
    # shakespeare_char's data and tokenizer; its validation: 2 batches of 12 x 64 in file order
    metrics = train(make_cfg(out, ["experiment=shakespeare_char", *FAST, "trainer.limit_val_batches=2",
                                   "data.eval_batch_size=12"]))
    return out / "checkpoints" / "last.ckpt", metrics


def test_checkpoints_rebuild_their_own_class(gpt_checkpoint, tmp_path):
    path, _ = gpt_checkpoint
    assert type(load_module(path)) is CausalLMModule
    mlm_out = tmp_path / "mlm"
    train(make_cfg(mlm_out, ["experiment=bert_mlm_tiny", *FAST]))
    assert type(load_module(mlm_out / "checkpoints" / "last.ckpt")) is MaskedLMModule
    with pytest.raises(ConfigError, match="no such checkpoint"):
        load_module(tmp_path / "missing.ckpt")


def test_intrinsic_scores_equal_the_runs_validation_and_tasks_are_tested(gpt_checkpoint, tmp_path):
    path, metrics = gpt_checkpoint
    cfg = make_cfg(tmp_path, [f"checkpoints=[{path},scratch]", f"+suite.intrinsic.shakespeare={SHAKESPEARE_VAL}",
                              "~suite.intrinsic.debian"], config_name="evaluate")
    # from scratch: a GPT with a small BPE, so both rows fine-tune the same architecture
    cfg.suite.tasks.spam = ["task=spam", *FAST, "model=gpt_tiny", "tokenizer=bpe", "tokenizer.vocab_size=500",
                            "model.block_size=64"]
    results = evaluate(cfg)
    (label,) = [k for k in results if k != "scratch"]
    # The same weights, data split and batches as the run's last validation: the same loss.
    assert results[label]["shakespeare/val/loss"] == pytest.approx(metrics["val/loss"], rel=1e-5)
    for row in results.values():
        assert {"spam/test/acc", "spam/test/f1", "spam/val/loss"} <= set(row)
        assert 0.0 <= row["spam/test/acc"] <= 1.0
    assert "shakespeare/val/loss" not in results["scratch"]  # nothing intrinsic to score without a checkpoint
    report = json.loads((tmp_path / "report.json").read_text())
    assert report == results
    table = (tmp_path / "report.md").read_text().splitlines()
    assert len(table) == 2 + len(results) and "spam/test/acc" in table[0]
    assert (tmp_path / "plots" / "spam_test_acc.png").stat().st_size > 0


def test_suite_during_pretraining_logs_eval_scores_and_leaves_the_run_unchanged(tmp_path):
    common = ["experiment=shakespeare_char", *FAST, "logger=csv", "trainer.max_steps=4", "trainer.limit_val_batches=2",
              "data.eval_batch_size=12",
              f"+suite.intrinsic.shakespeare={SHAKESPEARE_VAL}", "~suite.intrinsic.debian", "~suite.tasks.spam"]
    plain = train(make_cfg(tmp_path / "plain", common))
    with_eval = train(make_cfg(tmp_path / "eval", [*common, "callbacks.evaluation.every_n_steps=2"]))
    assert with_eval["train/loss"] == plain["train/loss"] and with_eval["val/loss"] == plain["val/loss"]
    rows = list(csv.DictReader(open(tmp_path / "eval" / "csv" / "metrics.csv")))
    evals = {int(r["step"]): float(r["eval/shakespeare/val/loss"]) for r in rows if r.get("eval/shakespeare/val/loss")}
    assert sorted(evals) == [2, 4]
    assert not any(k.startswith("eval/spam") for k in rows[0])  # the suite held no task: nothing fine-tuned
    assert evals[4] == pytest.approx(with_eval["val/loss"], rel=1e-5)  # step 4: the same weights and batches
    assert (tmp_path / "eval" / "eval" / "step000002.ckpt").is_file()
