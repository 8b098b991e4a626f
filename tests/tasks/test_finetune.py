"""Fine-tuning end to end: a pretraining checkpoint's network and tokenizer carry over, heads train
on real downstream data, and bad input ends in one clear error."""

import os
import subprocess
import sys

import lightning as L
import pytest
import torch

from conftest import make_cfg
from lmpretrain.finetune import build, finetune
from lmpretrain.plot import read_csv_metrics
from lmpretrain.run import fit_run
from lmpretrain.tasks import SequenceClassificationModule, TokenClassificationModule
from lmpretrain.train import train

FAST = ["debug=fast", "trainer.accelerator=cpu"]


@pytest.fixture(scope="module")
def mlm_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    train(make_cfg(out, ["experiment=bert_mlm_tiny", *FAST]))
    return out / "checkpoints" / "last.ckpt"


def test_pretrained_network_and_tokenizer_carry_over(mlm_checkpoint, tmp_path):
    cfg = make_cfg(tmp_path, ["task=spam", f"pretrained={mlm_checkpoint}", *FAST], config_name="finetune")
    datamodule, module, _ = build(cfg)
    ckpt = torch.load(mlm_checkpoint, weights_only=False)
    state = {k[len("network."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("network.")}
    ours = module.network.state_dict()
    assert set(ours) - set(state) == {"task_head.1.weight", "task_head.1.bias"}
    for name, value in state.items():
        assert torch.equal(ours[name], value), name
    assert module.tokenizer_json == ckpt["tokenizer_json"] == datamodule.tokenizer.to_str()
    assert datamodule.block_size == ckpt["hyper_parameters"]["model"]["block_size"]  # null = the model's
    assert module.labels == ["ham", "spam"] and module.pooling == "cls"


def test_finetune_runs_logs_metrics_and_reloads(mlm_checkpoint, tmp_path):
    metrics = finetune(make_cfg(tmp_path, ["task=spam", f"pretrained={mlm_checkpoint}", *FAST],
                                config_name="finetune"))
    assert {"val/loss", "val/acc", "val/f1", "test/acc", "test/f1"} <= set(metrics)
    module = SequenceClassificationModule.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert module.labels == ["ham", "spam"] and module.tokenizer_json


@pytest.mark.parametrize("pretrained,message", [
    ("/nonexistent/x.ckpt", "no such checkpoint file"),
    ("{tmp}", "is a folder"),
    ("{tmp}/junk.ckpt", "is not a checkpoint"),
])
def test_bad_pretrained_checkpoint_is_one_line(tmp_path, pretrained, message):
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    r = subprocess.run([sys.executable, "-m", "lmpretrain.finetune", *FAST, "task=spam",
                        f"pretrained={pretrained.format(tmp=tmp_path)}", f"hydra.run.dir={tmp_path}/run"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr[-2000:]


def test_gpt_checkpoint_classifies_from_its_last_token(tmp_path):
    pre = tmp_path / "pre"
    train(make_cfg(pre, ["data=debian", "tokenizer=wordpiece", "model=gpt_tiny", *FAST]))
    cfg = make_cfg(tmp_path / "ft", ["task=spam", f"pretrained={pre}/checkpoints/last.ckpt", *FAST],
                   config_name="finetune")
    _, module, _ = build(cfg)
    assert module.pooling == "last"
    batch = {"input_ids": torch.tensor([[5, 6, 7, 0], [5, 6, 8, 9]]), "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])}
    module.eval()
    logits = module(batch)
    alone = module({"input_ids": batch["input_ids"][:1, :3], "attention_mask": batch["attention_mask"][:1, :3]})
    torch.testing.assert_close(logits[:1], alone)  # padding after the last token changes nothing


@pytest.mark.slow
def test_spam_from_pretrained_beats_majority(mlm_checkpoint, tmp_path):
    """Fine-tuned for 150 steps, the classifier must clearly beat always-ham (70% of the data).
    Measured: val/acc 0.936, test/acc 0.924, val/f1 0.924 (300 steps: 0.959 / 0.950)."""
    metrics = finetune(make_cfg(tmp_path, ["task=spam", f"pretrained={mlm_checkpoint}", "trainer.max_steps=150",
                                           "trainer.val_check_interval=75", "logger=csv", "optimizer.lr=1e-3",
                                           "trainer.accelerator=cpu"], config_name="finetune"))
    assert metrics["val/acc"] >= 0.90 and metrics["test/acc"] >= 0.90, metrics
    assert metrics["val/f1"] >= 0.88, metrics


def test_flops_count_the_blocks_and_head_not_the_embedding_lookup(mlm_checkpoint, tmp_path):
    _, module, _ = build(make_cfg(tmp_path, ["task=spam", f"pretrained={mlm_checkpoint}", *FAST],
                                  config_name="finetune"))
    c = module.network.config
    per_block = 4 * c.n_embd * c.n_embd + 4 * c.n_embd + 2 * c.mlp_ratio * c.n_embd * c.n_embd \
        + (c.mlp_ratio + 1) * c.n_embd + 4 * c.n_embd  # q k v proj, fc proj, 2 LayerNorms
    head = c.n_embd * 2 + 2
    assert module.flops_per_token(64) == 6 * (c.n_layer * per_block + head) + 12 * c.n_layer * c.n_embd * 64


@pytest.mark.slow
def test_ner_finds_entities_after_300_steps(mlm_checkpoint, tmp_path):
    """WNUT-16 from a barely pretrained encoder is hard (state of the art is ~0.5 entity F1); after
    300 steps the tagger must find exact entity spans (F1 > 0.05) and its loss must have fallen."""
    metrics = finetune(make_cfg(tmp_path, ["task=ner_wnut", f"pretrained={mlm_checkpoint}", "trainer.max_steps=300",
                                           "trainer.val_check_interval=150", "logger=csv", "optimizer.lr=1e-3",
                                           "trainer.accelerator=cpu"], config_name="finetune"))
    assert metrics["val/f1"] > 0.05 and metrics["test/f1"] > 0.05, metrics
    assert metrics["val/loss"] < 0.5, metrics  # from ln(21) = 3.0 at the start


def test_from_scratch_trains_a_tokenizer_on_the_task_and_builds_the_model_group(tmp_path):
    metrics = finetune(make_cfg(tmp_path, ["task=ner_wnut", "model=bert_tiny", "tokenizer.vocab_size=3000", *FAST],
                                config_name="finetune"))
    assert {"val/f1", "test/f1", "val/token_acc"} <= set(metrics)
    module = TokenClassificationModule.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert module.network.config.n_layer == 2 and module.network.config.vocab_size <= 3000
    assert len(module.labels) == 21 and module.labels[-1] == "O"


# The same fine-tuning run on one process and on two data-parallel processes, comparable number for
# number (measured: every metric within 3e-7 relative, DDP and FSDP alike):
# - the same examples per optimizer step: the global batch is 16 either way, and data.shuffle=false
#   keeps the file order, so ranks 0 and 1 read records 0, 2, .. and 1, 3, .. of the 16 one process
#   reads (debian_section: its file is sorted by package name, which still mixes several sections
#   into the first batches; spam's files are sorted by label: in file order every early batch is ham).
# - nothing random: each rank would draw its own dropout masks, so the pretrained encoder is loaded
#   with dropout 0 (`no_dropout_checkpoint`) and the classifier's dropout is 0.
# - lr 1e-3 without warmup, so 4 steps move the curves (finetune.yaml's 50 warmup steps would keep
#   them flat and the comparison empty).
COMPARABLE = [*FAST, "task=debian_section", "data.shuffle=false", "task.classifier_dropout=0.0",
              "optimizer.lr=1e-3", "scheduler.warmup_steps=0", "logger=csv"]


@pytest.fixture(scope="module")
def no_dropout_checkpoint(mlm_checkpoint, tmp_path_factory):
    """`mlm_checkpoint` with model.dropout=0 in its config (same weights): fine-tuning takes the
    model config from the checkpoint, so this is how its encoder runs without dropout."""
    ckpt = torch.load(mlm_checkpoint, weights_only=False)
    ckpt["hyper_parameters"]["model"]["dropout"] = 0.0
    path = tmp_path_factory.mktemp("no_dropout") / "mlm.ckpt"
    torch.save(ckpt, path)
    return path


def finetune_cli(out, pretrained, *overrides) -> dict[str, dict[int, float]]:
    """Run `python -m lmpretrain.finetune`; its CSV metrics as {name: {step: value}} (test/* at the
    last step). One thread per process: 2 processes on 2 cores, and reproducible reductions."""
    r = subprocess.run([sys.executable, "-m", "lmpretrain.finetune", *COMPARABLE, f"pretrained={pretrained}",
                        *overrides, f"hydra.run.dir={out}"], check=False,
                       capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    return {name: dict(points) for name, points in read_csv_metrics(out).items()}


@pytest.fixture(scope="module")
def one_process_finetune(no_dropout_checkpoint, tmp_path_factory):
    return finetune_cli(tmp_path_factory.mktemp("one"), no_dropout_checkpoint, "data.batch_size=16")


@pytest.mark.slow  # two processes: ~40 s each, plus the one-process reference once
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_finetune_on_two_processes_matches_one_process(no_dropout_checkpoint, one_process_finetune, tmp_path,
                                                       strategy):
    """The encoder's pretraining heads sit unused during fine-tuning: DDP must be told (auto), and
    FSDP must load the best sharded checkpoint for the test split although those heads have no
    optimizer state. Both then follow the one-process run (same tolerance as tests/distributed/):
    every train/loss, the validations after steps 2 and 4, and test/* of the best checkpoint over the
    whole test split (torchmetrics sums both ranks' shares)."""
    one = one_process_finetune
    two = finetune_cli(tmp_path, no_dropout_checkpoint, f"strategy={strategy}", "trainer.devices=2",
                       "data.batch_size=8")
    assert sorted(one["train/loss"]) == sorted(two["train/loss"]) == [0, 1, 2, 3]
    assert abs(one["val/loss"][3] - one["val/loss"][1]) > 1e-2  # it trains: the comparison is not trivial
    for name in ("train/loss", "val/loss", "val/acc", "val/f1", "test/loss", "test/acc", "test/f1"):
        assert sorted(two[name]) == sorted(one[name]), name
        for step, value in one[name].items():
            assert two[name][step] == pytest.approx(value, rel=2e-5, abs=1e-6), (name, step, value, two[name][step])


class WeightsAtTest(L.Callback):
    def on_test_epoch_start(self, trainer, pl_module):
        self.weights = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def test_with_ema_the_test_split_scores_the_best_checkpoints_average(mlm_checkpoint, tmp_path):
    """callbacks=ema: after fit, the run scores its best checkpoint on the test split with that
    checkpoint's moving average. (Lightning's own callback put the checkpoint's trained weights
    back when the test stage loaded it: the score never saw the average.)"""
    cfg = make_cfg(tmp_path, ["task=spam", f"pretrained={mlm_checkpoint}", *FAST, "callbacks=ema",
                              "callbacks.ema.decay=0.5"], config_name="finetune")
    run = build(cfg)
    seen = WeightsAtTest()
    run.trainer.callbacks.append(seen)
    fit_run(cfg, run, test=True)
    best = torch.load(run.trainer.checkpoint_callback.best_model_path, weights_only=True)
    name = "network.tok_emb.weight"
    assert not torch.equal(best["state_dict"][name], best["current_model_state"][name])
    for k, v in best["state_dict"].items():
        assert torch.equal(seen.weights[k], v), k
