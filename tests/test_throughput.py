"""The throughput callback's tokens/s, samples/s, TFLOP/s and MFU agree with each other and the FLOP count."""

import pytest

from conftest import make_cfg
from lmpretrain.callbacks import TokenThroughput
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
    cb = Capture(peak_flops_per_device=1e11)
    trainer.callbacks.append(cb)
    trainer.fit(module, datamodule=datamodule)
    assert len(cb.logged) == 2  # every 2 batches
    for m in cb.logged:
        assert m["train/samples_per_sec"] * 64 == pytest.approx(m["train/tokens_per_sec"])  # 12 x 64 tokens
        # gpt_tiny: 5,204,736 training FLOPs per token (tests/test_runtime.py derives it)
        assert m["train/tflops_per_sec"] == pytest.approx(m["train/tokens_per_sec"] * 5_204_736 / 1e12)
        assert m["train/mfu"] == pytest.approx(m["train/tflops_per_sec"] * 1e12 / 1e11)
    assert trainer.callback_metrics["train/mfu"] == pytest.approx(cb.logged[-1]["train/mfu"])


def test_measured_cpu_peak_is_plausible():
    peak = measured_cpu_peak_flops()
    assert 1e9 < peak < 1e13  # 1 GFLOP/s .. 10 TFLOP/s for a few CPU cores in fp32
