import math
import os
import subprocess
import sys

import lightning as L
import pytest
import torch

from conftest import make_cfg
from lmpretrain.errors import ConfigError, DataError, TrainingDivergedError
from lmpretrain.generate import generate_text
from lmpretrain.objectives import CausalLMModule
from lmpretrain.optim import cosine_with_warmup
from lmpretrain.train import build, train

SHORT = ["debug=fast", "trainer.max_steps=40", "scheduler.warmup_steps=5", "scheduler.max_steps=40",
         "trainer.val_check_interval=20", "trainer.limit_val_batches=4"]


class Recorder(L.Callback):
    """Loss and learning rate of every optimizer step."""

    def __init__(self):
        self.loss, self.lr = {}, {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lr[trainer.global_step] = optimizer.param_groups[0]["lr"]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.loss[trainer.global_step] = float(outputs["loss"])


def fit(cfg, ckpt_path=None):
    datamodule, module, trainer = build(cfg)
    rec = Recorder()
    trainer.callbacks.append(rec)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    return rec, trainer


def test_loss_decreases_on_real_corpus(tmp_path):
    rec, trainer = fit(make_cfg(tmp_path, SHORT + ["optimizer.lr=3e-3"]))
    first, last = rec.loss[1], sum(rec.loss[s] for s in range(36, 41)) / 5
    assert first > 3.9  # ~ln(67): an untrained model guesses uniformly
    assert last < first - 1.0, (first, last)
    assert trainer.callback_metrics["val/loss"] < 3.3
    assert math.isclose(trainer.callback_metrics["val/ppl"], math.exp(trainer.callback_metrics["val/loss"]), rel_tol=1e-5)


def test_eval_batch_size_changes_only_the_speed_of_validation(tmp_path):
    """data.eval_batch_size: the whole validation split in fewer, larger batches, the same val/loss
    (token-weighted), and the training stream untouched."""
    losses = {}
    for eval_batch in (None, 100):
        cfg = make_cfg(tmp_path / str(eval_batch), ["debug=fast", "trainer.limit_val_batches=1.0",
                                                    f"data.eval_batch_size={eval_batch or 'null'}"])
        datamodule, module, trainer = build(cfg)
        trainer.validate(module, datamodule=datamodule, verbose=False)
        sizes = [len(b["input_ids"]) for b in datamodule.val_dataloader()]
        assert max(sizes) == (eval_batch or cfg.data.batch_size) and datamodule.train_dataloader().batch_size == 12
        losses[eval_batch] = (float(trainer.callback_metrics["val/loss"]), sum(sizes))
    assert losses[None][1] == losses[100][1] > 1000  # every block of the split, both ways
    assert losses[100][0] == pytest.approx(losses[None][0], rel=1e-5)


def test_lr_follows_schedule_every_optimizer_step_with_accumulation(tmp_path):
    rec, _ = fit(make_cfg(tmp_path, SHORT + ["trainer.max_steps=12", "scheduler.max_steps=12",
                                              "trainer.accumulate_grad_batches=2", "trainer.val_check_interval=24"]))
    assert sorted(rec.lr) == list(range(12))  # one LR per optimizer step, not per batch
    for step, lr in rec.lr.items():
        expected = cosine_with_warmup(step, lr=1e-3, warmup_steps=5, max_steps=12, min_lr=1e-4)
        assert lr == pytest.approx(expected, rel=1e-12), step


def test_resume_from_last_ckpt_gives_identical_losses(tmp_path):
    """40 steps straight == 20 steps, then resume from last.ckpt for 20 more: same data, same losses."""
    straight, _ = fit(make_cfg(tmp_path / "a", SHORT))
    make_first = make_cfg(tmp_path / "b", [*SHORT, "trainer.max_steps=20"])
    first, _ = fit(make_first)
    last = tmp_path / "b" / "checkpoints" / "last.ckpt"
    assert last.is_file() and torch.load(last, weights_only=False)["global_step"] == 20
    resumed, trainer = fit(make_cfg(tmp_path / "b", SHORT), ckpt_path=str(last))
    assert trainer.global_step == 40
    assert sorted(resumed.loss) == list(range(21, 41))
    for step in range(21, 41):
        assert resumed.loss[step] == pytest.approx(straight.loss[step], rel=1e-6, abs=1e-6), step


class WeightsPerStep(L.Callback):
    """The trained (not averaged) weights after every optimizer step, and those validation sees."""

    def __init__(self):
        self.weights = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})

    def on_validation_epoch_start(self, trainer, pl_module):  # after the averaging callback's own hook
        self.at_validation = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def test_ema_checkpoint_holds_the_moving_average_and_a_resume_continues_it_exactly(tmp_path):
    """callbacks=ema: the checkpoint's weights (what test, export and pretrained= read) are
    avg_1 = w_1, avg_t = d * avg_{t-1} + (1 - d) * w_t over the trained weights w_t of each step; the
    module ends holding them; 4 steps + a resume for 4 more give the same average as 8 straight."""
    ema = [*SHORT, "callbacks=ema", "callbacks.ema.decay=0.5", "trainer.max_steps=8", "trainer.val_check_interval=4"]
    datamodule, module, trainer = build(make_cfg(tmp_path / "a", [*ema, "callbacks.model_checkpoint.save_top_k=-1"]))
    seen = WeightsPerStep()
    trainer.callbacks.append(seen)
    trainer.fit(module, datamodule=datamodule)
    assert len(seen.weights) == 8
    expected = dict(seen.weights[0])
    for w in seen.weights[1:]:
        expected = {k: 0.5 * expected[k] + 0.5 * w[k] if w[k].is_floating_point() else w[k] for k in w}
    saved = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=True)
    name = "network.tok_emb.weight"
    assert not torch.equal(seen.weights[-1][name], expected[name])  # the average is not the last weights
    for k, v in expected.items():
        torch.testing.assert_close(saved["state_dict"][k], v, rtol=1e-5, atol=1e-6, msg=k)
        torch.testing.assert_close(module.state_dict()[k], v, rtol=1e-5, atol=1e-6, msg=k)
    torch.testing.assert_close(saved["current_model_state"][name], seen.weights[-1][name])
    # validating an earlier checkpoint after fit sees that checkpoint's average: not its trained
    # weights, not the end of fit's average (the test split: tests/tasks/test_finetune.py)
    mid_path = next((tmp_path / "a" / "checkpoints").glob("step000004-*.ckpt"))
    mid = torch.load(mid_path, weights_only=True)
    trainer.validate(module, datamodule=datamodule, ckpt_path=str(mid_path), verbose=False)
    for k, v in mid["state_dict"].items():
        torch.testing.assert_close(seen.at_validation[k], v, rtol=0, atol=0, msg=k)
    assert not torch.equal(mid["state_dict"][name], mid["current_model_state"][name])

    fit(make_cfg(tmp_path / "b", [*ema, "trainer.max_steps=4"]))
    fit(make_cfg(tmp_path / "b", ema), ckpt_path=str(tmp_path / "b" / "checkpoints" / "last.ckpt"))
    resumed = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)
    for key in ("state_dict", "current_model_state"):
        for k, v in saved[key].items():
            torch.testing.assert_close(resumed[key][k], v, rtol=1e-5, atol=1e-6, msg=f"{key} {k}")


def test_ema_with_a_sharded_strategy_is_one_config_error(tmp_path):
    with pytest.raises(ConfigError, match="callbacks=ema keeps an unsharded copy"):
        build(make_cfg(tmp_path, ["debug=fast", "callbacks=ema", "strategy=fsdp", "trainer.devices=2"]))


def test_checkpoint_rebuilds_without_hydra_and_generates(tmp_path):
    train(make_cfg(tmp_path, SHORT))
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    module = CausalLMModule.load_from_checkpoint(ckpt, weights_only=False)
    assert module.network.config.n_layer == 4 and module.tokenizer_json
    greedy = generate_text(ckpt, "ROMEO:", max_new_tokens=30, temperature=0)
    assert greedy[0].startswith("ROMEO:") and len(greedy[0]) == len("ROMEO:") + 30
    assert generate_text(ckpt, "ROMEO:", max_new_tokens=30, temperature=0) == greedy  # deterministic


class PoisonWeights(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 3:
            with torch.no_grad():
                pl_module.network.tok_emb.weight.fill_(float("nan"))


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoints(tmp_path):
    datamodule, module, trainer = build(make_cfg(tmp_path, [*SHORT, "trainer.val_check_interval=2"]))
    trainer.callbacks.append(PoisonWeights())
    with pytest.raises(TrainingDivergedError, match="train/loss is nan at step 3; lower optimizer.lr"):
        trainer.fit(module, datamodule=datamodule)
    good = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert good["global_step"] == 2
    assert all(torch.isfinite(t).all() for t in good["state_dict"].values())


def test_model_tokenizer_mismatch_fails_before_training(tmp_path):
    with pytest.raises(ConfigError, match="model.vocab_size=10 is smaller than the tokenizer's 67"):
        build(make_cfg(tmp_path, ["debug=fast", "model.vocab_size=10"]))
    with pytest.raises(ConfigError, match="data.block_size=128 is longer than model.block_size=64"):
        build(make_cfg(tmp_path, ["debug=fast", "data.block_size=128"]))
    with pytest.raises(DataError, match="does not exist"):
        build(make_cfg(tmp_path, ["debug=fast", "data.files=[missing.txt]"]))


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize(
    "override,message,status",
    [
        # An unknown key or option: Hydra's own message and exit status (1), before our code runs.
        ("model.n_layerz=3", "Key 'n_layerz' is not in struct", 1),
        ("model=gpt_huge", "Could not find 'model/gpt_huge'", 1),
        # A value that cannot work: one `error: ...` line and exit status 2 (README, "Overrides").
        ("data.files=[missing.txt]", "error: corpus file .*missing.txt does not exist", 2),
        ("model.n_head=5", "error: model.n_embd=128 must be divisible by model.n_head=5", 2),
    ],
)
def test_cli_bad_input_is_one_message_no_traceback(tmp_path, override, message, status):
    r = run_cli("lmpretrain.train", "debug=fast", override, f"hydra.run.dir={tmp_path}")
    assert r.returncode == status, r.stderr[-2000:]
    assert "Traceback" not in r.stderr + r.stdout
    import re

    assert re.search(message, r.stderr), r.stderr
    if status == 2:
        assert re.fullmatch(message + r"[^\n]*", r.stderr.strip()), r.stderr  # that line and nothing else


def test_cli_train_then_generate(tmp_path):
    r = run_cli("lmpretrain.train", "debug=fast", f"hydra.run.dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / ".hydra" / "config.yaml").is_file()  # config snapshot next to the outputs
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    g = run_cli("lmpretrain.generate", f"ckpt_path={ckpt}", "prompt=ROMEO:", "max_new_tokens=20",
                f"hydra.run.dir={tmp_path}")
    assert g.returncode == 0, g.stderr[-2000:]
    assert g.stdout.startswith("ROMEO:") and len(g.stdout.rstrip("\n")) >= len("ROMEO:") + 10


def test_wandb_offline_without_api_key_and_csv_metrics(tmp_path):
    env = {"WANDB_MODE": "", "WANDB_API_KEY": "", "HOME": str(tmp_path / "home")}
    r = run_cli("lmpretrain.train", "debug=fast", "logger=[csv,wandb]", f"hydra.run.dir={tmp_path}",
                env={k: v for k, v in env.items()})
    assert r.returncode == 0, r.stderr[-3000:]
    assert list((tmp_path / "wandb").glob("offline-run-*")), "wandb did not log offline"
    metrics = (tmp_path / "csv" / "metrics.csv").read_text()
    assert "train/loss" in metrics and "val/loss" in metrics
