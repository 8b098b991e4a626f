"""SIGTERM / SIGUSR1 during fit: the optimizer step in progress finishes, last.ckpt is saved, the run
stops with exit status 128 + signal, and resuming gives the losses of an uninterrupted run."""

import os
import re
import signal
import subprocess
import sys
import time

import lightning as L
import pytest
import torch

from conftest import make_cfg
from lmpretrain.errors import Preempted, find_user_error
from lmpretrain.train import build

FAST = ["debug=fast", "trainer.max_steps=16", "scheduler.warmup_steps=4", "scheduler.max_steps=16",
        "trainer.val_check_interval=8", "trainer.limit_val_batches=2"]


class Recorder(L.Callback):
    def __init__(self):
        self.loss = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.loss[trainer.global_step] = float(outputs["loss"])


class SignalAt(L.Callback):
    """Send `signum` to this process at the end of micro-batch number `batch` (0-based)."""

    def __init__(self, batch, signum):
        self.batch, self.signum, self.batches = batch, signum, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.batches == self.batch:
            os.kill(os.getpid(), self.signum)
        self.batches += 1


def fit(cfg, *callbacks):
    """Build and fit as `run.fit_run` does (ckpt_path from the config, `last` resolved by build)."""
    datamodule, module, trainer = build(cfg)
    rec = Recorder()
    trainer.callbacks += [rec, *callbacks]
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    except Exception as e:  # noqa: BLE001
        return rec, trainer, e
    return rec, trainer, None


def test_sigterm_saves_last_ckpt_and_resume_equals_uninterrupted_run(tmp_path):
    straight, _, error = fit(make_cfg(tmp_path / "a", FAST))
    assert error is None and sorted(straight.loss) == list(range(1, 17))

    first, trainer, error = fit(make_cfg(tmp_path / "b", FAST), SignalAt(batch=10, signum=signal.SIGTERM))
    preempted = find_user_error(error)
    assert isinstance(preempted, Preempted) and preempted.exit_status == 143, error
    assert re.fullmatch(r"preempted by SIGTERM at step 12: saved .*last\.ckpt; resume with ckpt_path=last.*",
                        str(preempted))
    # The signal came after step 11's batch end; the Preemption callback ran before SignalAt in that
    # hook, so the next boundary is step 12.
    last = tmp_path / "b" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 12
    assert sorted(first.loss) == list(range(1, 12))  # step 12 trained; Preemption stopped the hooks after it

    cfg = make_cfg(tmp_path / "b", [*FAST, "ckpt_path=last"])
    resumed, trainer, error = fit(cfg)
    assert error is None and cfg.ckpt_path == str(last) and trainer.global_step == 16
    assert sorted(resumed.loss) == list(range(13, 17))
    for step in range(13, 17):
        assert resumed.loss[step] == pytest.approx(straight.loss[step], rel=1e-6, abs=1e-6), step


def test_sigusr1_mid_accumulation_saves_after_the_step_completes(tmp_path):
    """With 2 micro-batches per step, a signal after micro-batch 5 (the first half of step 3) is acted
    on once step 3 is done: last.ckpt holds 3 whole optimizer steps (6 batches), exit status 138."""
    cfg = make_cfg(tmp_path, [*FAST, "trainer.accumulate_grad_batches=2"])
    before = signal.getsignal(signal.SIGUSR1)
    _, _, error = fit(cfg, SignalAt(batch=4, signum=signal.SIGUSR1))
    preempted = find_user_error(error)
    assert isinstance(preempted, Preempted) and preempted.exit_status == 128 + signal.SIGUSR1
    assert str(preempted).startswith("preempted by SIGUSR1 at step 3:")
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3
    assert ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"] == 6
    assert signal.getsignal(signal.SIGUSR1) == before  # the handler is restored after the run


def test_under_slurm_rank_0_requeues_the_job_and_auto_resumes(tmp_path, monkeypatch):
    """SLURM_JOB_ID set: after saving on SIGUSR1, `scontrol requeue <job>` (a stand-in on PATH records it); the
    requeued job's ckpt_path=auto finds that last.ckpt, where a first start with auto starts fresh."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol.calls"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    first = make_cfg(tmp_path / "run", [*FAST, "ckpt_path=auto"])
    _, _, error = fit(first, SignalAt(batch=2, signum=signal.SIGUSR1))
    assert first.ckpt_path is None  # nothing to resume the first time
    preempted = find_user_error(error)
    assert isinstance(preempted, Preempted) and "at step 4: saved" in str(preempted), error
    assert "; requeued SLURM job 4242; resume with" in str(preempted)
    assert calls.read_text() == "requeue 4242\n"
    # SIGTERM is also what `scancel` sends: such a job stays cancelled.
    _, _, error = fit(make_cfg(tmp_path / "cancelled", FAST), SignalAt(batch=2, signum=signal.SIGTERM))
    assert isinstance(find_user_error(error), Preempted) and "requeue" not in str(error)
    assert calls.read_text() == "requeue 4242\n"
    again = make_cfg(tmp_path / "run", [*FAST, "trainer.max_steps=5", "ckpt_path=auto"])
    _, trainer, error = fit(again)
    assert error is None and again.ckpt_path == str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert trainer.global_step == 5


def run_cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, **kw)


def sigterm_after_first_save(args, last):
    """Start `python -m <args>`, SIGTERM it once `last` exists; (the finished process, its stderr)."""
    proc = run_cli(*args)
    deadline = time.time() + 240
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    return proc, err


@pytest.mark.slow
def test_cli_sigterm_exits_143_with_one_line_and_resumes(tmp_path):
    """The real thing: `kill -TERM` of a training process once it has saved at step 5; ~40 s."""
    args = ["lmpretrain.train", *FAST, "trainer.max_steps=200", "scheduler.max_steps=200",
            "trainer.val_check_interval=5", f"hydra.run.dir={tmp_path}"]
    last = tmp_path / "checkpoints" / "last.ckpt"
    proc, err = sigterm_after_first_save(args, last)
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    step = int(re.fullmatch(r"error: preempted by SIGTERM at step (\d+): saved .*last\.ckpt; .*", line).group(1))
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["global_step"] == step >= 5 and "optimizer_states" in ckpt
    resume = run_cli(*args[:-1], f"trainer.max_steps={step + 2}", "ckpt_path=last", f"hydra.run.dir={tmp_path}")
    _, err = resume.communicate(timeout=240)
    assert resume.returncode == 0, err[-3000:]
    assert torch.load(last, weights_only=True)["global_step"] == step + 2


@pytest.mark.slow
def test_ddp_sigterm_to_the_launching_process_stops_both_ranks_at_one_step(tmp_path):
    """strategy=ddp on 2 CPU processes: SIGTERM to rank 0 (which started rank 1) reaches both; they agree
    on the step, rank 0 saves, both exit 143 without hanging; ~45 s."""
    args = ["lmpretrain.train", "debug=fast", "global_batch_size=8", "trainer.max_steps=300", "scheduler.max_steps=300",
            "trainer.val_check_interval=5", "trainer.limit_val_batches=1", "trainer.accelerator=cpu",
            "data.batch_size=4", "trainer.devices=2", "strategy=ddp", f"hydra.run.dir={tmp_path}"]
    last = tmp_path / "checkpoints" / "last.ckpt"
    proc, err = sigterm_after_first_save(args, last)
    assert proc.returncode == 143, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("error: preempted")]
    steps = {int(re.match(r"error: preempted by SIGTERM at step (\d+):", line).group(1)) for line in lines}
    assert len(lines) == 2 and len(steps) == 1, lines  # one line per rank, the same step
    assert torch.load(last, weights_only=True)["global_step"] == steps.pop()
