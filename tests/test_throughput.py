"""The throughput callback's tokens/s, samples/s, TFLOP/s and MFU agree with each other and the FLOP count."""

import json
import subprocess
import sys
import time

import pytest
import torch

from conftest import make_cfg
from lmpretrain.callbacks import TokenThroughput, throughput
from lmpretrain.callbacks.throughput import measured_cpu_peak_flops
from lmpretrain.train import build


class Capture(TokenThroughput):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.logged = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        log_dict = pl_module.log_dict
        pl_module.log_dict = lambda metrics, **kw: (self.logged.append(dict(metrics)), log_dict(metrics, **kw))
        try:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        finally:
            pl_module.log_dict = log_dict


def test_mfu_from_flops_per_token_and_peak(tmp_path):
    cfg = make_cfg(tmp_path, ["debug=fast", "trainer.max_steps=4", "trainer.log_every_n_steps=2",
                              "callbacks.throughput=null", "data.batch_size=12"])
    datamodule, module, trainer = build(cfg)
    # A peak no CPU reaches: at 1e11, a fast window of gpt_tiny on an AMX machine ran 1.016e11 FLOP/s
    # and its MFU read 1.0, capped (never above 1), not the ratio this test checks.
    cb = Capture(peak_flops_per_device=1e13)
    trainer.callbacks.append(cb)
    trainer.fit(module, datamodule=datamodule)
    assert len(cb.logged) == 2  # every 2 batches
    for m in cb.logged:
        assert m["train/samples_per_sec"] * 64 == pytest.approx(m["train/tokens_per_sec"])  # 12 x 64 tokens
        # gpt_tiny: 5,204,736 training FLOPs per token (tests/test_runtime.py derives it)
        assert m["train/tflops_per_sec"] == pytest.approx(m["train/tokens_per_sec"] * 5_204_736 / 1e12)
        assert m["train/mfu"] == pytest.approx(m["train/tflops_per_sec"] * 1e12 / 1e13)
    assert trainer.callback_metrics["train/mfu"] == pytest.approx(cb.logged[-1]["train/mfu"])


def test_windows_are_back_to_back_so_the_wait_between_batches_counts(monkeypatch):
    """Each batch computes 0.1 s and waits 0.9 s for the next one (a slow data loader): the rate is
    tokens per wall-clock second, 1 s a batch, also in the second window, whose clock starts where the
    first one ended, not at its own first batch (which once skipped the gaps: on an H200, GPT-2's
    logged MFU was 1.2-1.8x its real rate)."""
    from types import SimpleNamespace

    now = [0.0]
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: now[0])
    logged = []
    module = SimpleNamespace(log_dict=lambda metrics, **kw: logged.append(dict(metrics)),
                             flops_per_token=lambda seq_len: None)
    trainer = SimpleNamespace(world_size=1, log_every_n_steps=2, is_global_zero=True, loggers=[], global_step=0)
    cb = TokenThroughput(peak_flops_per_device=1e20)
    cb._peak, cb._cpu_dtype, cb._startup_logged = 1e20, None, True
    batch = {"input_ids": torch.zeros(4, 100, dtype=torch.long)}  # 400 tokens
    for i in range(4):
        now[0] = i * 1.0
        cb.on_train_batch_start(trainer, module, batch, i)
        now[0] = i * 1.0 + 0.1
        cb.on_train_batch_end(trainer, module, None, batch, i)
    first, second = (m["train/tokens_per_sec"] for m in logged)
    assert first == pytest.approx(800 / 1.1)  # batch 0's start to batch 1's end
    assert second == pytest.approx(800 / 2.0)  # batch 1's end to batch 3's end: both waits count


def test_measured_cpu_peak_is_plausible():
    peak = measured_cpu_peak_flops()
    assert 1e9 < peak < 1e13  # 1 GFLOP/s .. 10 TFLOP/s for a few CPU cores in fp32


def test_mfu_never_exceeds_one_and_the_better_peak_is_kept(tmp_path, monkeypatch):
    """A peak probed on a busy machine is too low; the callback then takes the achieved rate as the
    peak (MFU 1.0, never above) and, on a CPU, keeps it in the cache for later runs."""
    monkeypatch.setenv("LMPRETRAIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(throughput, "measured_cpu_peak_flops", lambda dtype, n=1024: 1e6)  # 1 MFLOP/s: far too low
    cfg = make_cfg(tmp_path, ["debug=fast", "trainer.max_steps=6", "trainer.log_every_n_steps=2",
                              "callbacks.throughput=null", "data.batch_size=12"])
    datamodule, module, trainer = build(cfg)
    cb = Capture()
    trainer.callbacks.append(cb)
    trainer.fit(module, datamodule=datamodule)
    mfus = [m["train/mfu"] for m in cb.logged]
    assert len(mfus) == 3 and all(0 < m <= 1.0 for m in mfus)
    assert mfus[0] == 1.0  # the first window set the peak
    achieved = max(m["train/tflops_per_sec"] for m in cb.logged) * 1e12
    cached = throughput.cpu_peak_flops(torch.float32)  # the cache wins over a (fake) 1 MFLOP/s probe
    assert cached == pytest.approx(achieved)


def test_cpu_peak_is_the_best_ever_measured(tmp_path, monkeypatch):
    monkeypatch.setenv("LMPRETRAIN_CACHE", str(tmp_path))
    monkeypatch.setattr(throughput, "measured_cpu_peak_flops", lambda dtype, n=1024: 5e10)
    assert throughput.cpu_peak_flops(torch.float32) == 5e10  # measured once, then cached

    def never(dtype, n=1024):
        raise AssertionError("a cached peak is not measured again (start-up time)")

    monkeypatch.setattr(throughput, "measured_cpu_peak_flops", never)
    assert throughput.cpu_peak_flops(torch.float32) == 5e10
    assert throughput.remember_cpu_peak(torch.float32, 2e10) == 5e10  # a slower window changes nothing
    assert throughput.remember_cpu_peak(torch.float32, 8e10) == 8e10  # a faster one raises the peak
    assert throughput.cpu_peak_flops(torch.float32) == 8e10
    monkeypatch.setattr(throughput, "measured_cpu_peak_flops", lambda dtype, n=1024: 3e10)
    assert throughput.cpu_peak_flops(torch.bfloat16) == 3e10  # bf16 has its own entry
    assert len(json.loads((tmp_path / "cpu_peak_flops_v2.json").read_text())) == 2


def test_seconds_since_process_start_counts_the_interpreter_start(tmp_path):
    """A child that sleeps 1 s before importing us reports at least that second, and no more than the
    parent saw the child live."""
    code = ("import time; time.sleep(1.0); "
            "from lmpretrain.clock import seconds_since_process_start as s; print(s())")
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    wall = time.perf_counter() - started
    assert 1.0 <= float(out) <= wall + 0.02, (out, wall)  # /proc's 10 ms ticks on both ends


def test_a_module_that_counts_per_batch_is_counted_per_batch():
    """Seq2seq fine-tuning counts by batch (source and target lengths differ): the callback takes
    `flops_per_batch` over `flops_per_token` and multiplies it by the ranks."""
    from types import SimpleNamespace

    logged = []

    class Module:
        def flops_per_batch(self, batch):
            return 1e9  # per batch on each rank, whatever its shape

        def flops_per_token(self, seq_len):
            raise AssertionError("the per-batch count must win")

        def log_dict(self, metrics, **kw):
            logged.append(dict(metrics))

    trainer = SimpleNamespace(world_size=2, log_every_n_steps=2, is_global_zero=True, loggers=[], global_step=0)
    cb = TokenThroughput(peak_flops_per_device=1e20)
    cb._peak, cb._cpu_dtype, cb._startup_logged = 1e20, None, True
    module, batch = Module(), {"input_ids": torch.zeros(4, 100, dtype=torch.long)}
    for i in range(2):
        cb.on_train_batch_start(trainer, module, batch, i)
        cb.on_train_batch_end(trainer, module, None, batch, i)
    (m,) = logged
    # 2 batches x 1e9 x 2 ranks over 2 x 4 x 100 x 2 tokens: 2.5e6 FLOPs per token
    assert m["train/tflops_per_sec"] * 1e12 / m["train/tokens_per_sec"] == pytest.approx(2.5e6)


def test_measuring_the_cpu_peak_leaves_the_global_random_state_alone():
    """The peak is measured once per machine (then cached): drawing its matrices from the global
    generator gave the first run on a machine other dropout masks than every later run."""
    from lmpretrain.callbacks.throughput import measured_cpu_peak_flops

    before = torch.get_rng_state()
    assert measured_cpu_peak_flops.__wrapped__(n=64, seconds=0.01) > 0
    assert torch.equal(before, torch.get_rng_state())
