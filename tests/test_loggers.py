"""Dashboards: TensorBoard gets the same scalars as the CSV log; wandb runs are tagged and grouped;
tokens seen is logged as an x axis and continues across a resume."""

from __future__ import annotations

import csv
import time

import pytest

from conftest import make_cfg
from lmpretrain.run import fit_run
from lmpretrain.train import build, train

FAST = ["trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.limit_val_batches=2",
        "trainer.log_every_n_steps=2", "trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false",
        "callbacks.rich_progress_bar=null", "data.batch_size=8"]


def _csv(run_dir, key):
    with open(run_dir / "csv" / "metrics.csv") as f:
        return {int(r["step"]): float(r[key]) for r in csv.DictReader(f) if r.get(key)}


@pytest.mark.slow
def test_tensorboard_logs_what_csv_logs(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(make_cfg(tmp_path, [*FAST, "logger=[csv,tensorboard]"]))
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    for key in ["train/loss", "val/loss", "train/tokens_seen"]:
        tb = {e.step: e.value for e in events.Scalars(key)}
        assert tb == pytest.approx(_csv(tmp_path, key)), key
    # 8 sequences x 64 tokens per step (gpt_tiny on tiny-shakespeare): tokens seen by steps 2 and 4
    assert sorted(_csv(tmp_path, "train/tokens_seen").values()) == [2 * 8 * 64, 4 * 8 * 64]


@pytest.mark.slow
def test_tokens_seen_continues_after_resume(tmp_path):
    train(make_cfg(tmp_path / "a", [*FAST, "logger=csv"]))
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    train(make_cfg(tmp_path / "b", [*FAST, "logger=csv", "trainer.max_steps=6", f"ckpt_path={last}"]))
    assert list(_csv(tmp_path / "b", "train/tokens_seen").values()) == [6 * 8 * 64]  # 4 steps before, 2 after


def test_wandb_run_is_tagged_and_grouped(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    _, _, trainer = build(make_cfg(tmp_path, [*FAST, "logger=wandb", "logger.wandb.tags=[mine]",
                                              "objective=causal_lm", "model=gpt_tiny"]))
    (wandb,) = trainer.loggers
    init = wandb._wandb_init
    assert init["tags"] == ["mine", "model:gpt_tiny", "objective:causal_lm", "precision:32-true", "strategy:auto"]
    assert init["group"] == "train" and "anonymous" not in init


def test_tensorboard_missing_is_one_line(tmp_path, monkeypatch):
    import importlib.util

    from lmpretrain.errors import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("tensorboard", "tensorboardX") else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'lmpretrain\[tensorboard\]'"):
        build(make_cfg(tmp_path, [*FAST, "logger=tensorboard"]))


def test_wandb_starts_in_the_background_and_keeps_what_was_logged_meanwhile(tmp_path, monkeypatch):
    """wandb.init (held here until `gate` opens) does not block logging: calls made meanwhile reach the
    run in order once it is up; the run id is known at once (checkpoints store it before the run exists)."""
    import re
    import threading

    import wandb
    from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger

    from lmpretrain.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    gate, real_init = threading.Event(), wandb.init
    monkeypatch.setattr(wandb, "init", lambda **kw: real_init(**kw) if gate.wait(60) else None)
    delivered, real_log = [], LightningWandbLogger.log_metrics

    def spy(self, metrics, step=None):
        delivered.append((step, dict(metrics)))
        real_log(self, metrics, step)

    monkeypatch.setattr(LightningWandbLogger, "log_metrics", spy)
    logger = WandbLogger(save_dir=str(tmp_path), project="p", name="n")
    run_id = logger.version
    assert re.fullmatch(r"[a-z0-9]{8}", run_id)
    logger.log_hyperparams({"lr": 0.1})
    for step in (1, 2, 3):
        logger.log_metrics({"train/loss": 1 / step}, step)
    assert logger._experiment is None and delivered == []  # the run is not up: nothing waited for it
    gate.set()
    logger.finalize("success")  # the end of fit waits for the run and hands it what was kept
    logger.log_metrics({"train/loss": 0.1}, 4)  # once up: straight through
    assert [step for step, _ in delivered] == [1, 2, 3, 4]
    run = logger.experiment
    assert run.id == run_id and run.config["lr"] == 0.1 and run.summary["train/loss"] == 0.1
    run.finish()
    assert [p.name.rsplit("-", 1)[1] for p in (tmp_path / "wandb").glob("offline-run-*")] == [run_id]


def test_a_wandb_start_that_fails_in_the_background_is_raised_at_the_next_log_call(tmp_path, monkeypatch):
    import threading

    import wandb

    from lmpretrain.loggers import WandbLogger

    gate = threading.Event()

    def init(**kw):
        gate.wait(60)
        raise wandb.errors.CommError("could not reach api.wandb.ai")

    monkeypatch.setattr(wandb, "init", init)
    logger = WandbLogger(save_dir=str(tmp_path), project="p")
    logger.log_hyperparams({"lr": 0.1})  # kept: nothing starts before the first metrics
    assert logger._starting is None
    logger.log_metrics({"train/loss": 1.0}, 1)  # starts wandb.init and returns: the run is still starting
    gate.set()
    logger._starting.join()
    with pytest.raises(wandb.errors.CommError, match="could not reach"):
        logger.log_metrics({"train/loss": 0.5}, 2)


def test_the_first_training_step_does_not_wait_for_wandb(tmp_path, monkeypatch):
    """Lightning's setup hook reads `logger.experiment` before the first step; with wandb.init held
    until the first training batch starts, the run still trains (it waited for nothing) and the run
    gets every metric and the config once it is up."""
    import threading

    import lightning as L
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    first_step, real_init, waited = threading.Event(), wandb.init, []

    def init(**kw):
        waited.append(first_step.wait(30))  # False: fit sat waiting for the run until this timed out
        return real_init(**kw)

    class Gate(L.Callback):
        def on_train_batch_start(self, *args):
            first_step.set()

    monkeypatch.setattr(wandb, "init", init)
    cfg = make_cfg(tmp_path, [*FAST, "logger=[csv,wandb]"])
    datamodule, module, trainer = build(cfg)
    trainer.callbacks.append(Gate())
    fit_run(cfg, (datamodule, module, trainer))
    assert waited == [True]
    (record,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")  # protobuf: strings stored verbatim
    # wandb's service process writes this file and may still be flushing it when finish() returns
    # (one CI run read only its 7-byte header): wait for it, up to a minute
    deadline = time.monotonic() + 60
    while not all(s in record.read_bytes() for s in (b"val/loss", b"max_steps")) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert b"val/loss" in record.read_bytes() and b"max_steps" in record.read_bytes()


def test_wandb_starts_after_the_first_optimizer_step(tmp_path, monkeypatch):
    """Nothing of wandb runs beside the set-up and the first step: wandb.init is called once the first
    metrics are logged (here after step 1, debug=fast logging every step), in the background thread."""
    import threading

    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    real_init, calls = wandb.init, []

    def init(**kw):
        calls.append((trainer.global_step, threading.current_thread().name))
        return real_init(**kw)

    monkeypatch.setattr(wandb, "init", init)
    cfg = make_cfg(tmp_path, [*FAST, "logger=[csv,wandb]"])
    datamodule, module, trainer = build(cfg)
    fit_run(cfg, (datamodule, module, trainer))
    assert len(calls) == 1 and calls[0][0] >= 1 and calls[0][1] == "wandb-init", calls


def test_experiment_waits_for_a_starting_run_only_where_wandb_must_come_first(tmp_path, monkeypatch):
    """While wandb.init runs, `.experiment` is a stand-in (reading it does not wait; using it does),
    except with sync_tensorboard, where wandb must be up before Lightning's setup creates TensorBoard
    writers."""
    import threading
    from types import SimpleNamespace

    import wandb

    from lmpretrain.loggers import WandbLogger, _StartingRun

    for sync in (False, True):
        gate = threading.Event()
        run = SimpleNamespace(config=SimpleNamespace(update=lambda *a, **k: None), id="x")
        monkeypatch.setattr(wandb, "init", lambda gate=gate, run=run, **kw: gate.wait(60) and run)
        logger = WandbLogger(save_dir=str(tmp_path), project="p", **({"sync_tensorboard": True} if sync else {}))
        logger.log_hyperparams({"lr": 0.1})  # a run is due (started by using it, held by the gate)
        threading.Timer(2.0, gate.set).start()
        experiment = logger.experiment
        if sync:
            assert experiment is run  # waited
        else:
            assert isinstance(experiment, _StartingRun) and not gate.is_set()
            assert experiment.id == "x" and logger.experiment is run  # using it waited
