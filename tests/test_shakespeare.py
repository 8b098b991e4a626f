"""The real run: nanoGPT's CPU shakespeare_char config must reach val/loss <= 1.90 at step 2000.

Seed-to-seed spread of one run is about +-0.003 here (README), as large as the margin to the
target, so the README's claim is the mean of three seeds (nanoGPT's 1337, then 1 and 2), each
evaluated on the whole validation split: `LMPRETRAIN_SHAKESPEARE_SEEDS=1337,1,2 pytest -m slow
tests/test_shakespeare.py` (~15 min). CI runs nanoGPT's own seed only (~5 min), which must land
within 0.01 of the target (nanoGPT's 1.88 plus its 20-batch estimate's noise).
"""

import os

import pytest

from conftest import make_cfg, require_data
from lmpretrain.train import build

SEEDS = tuple(int(s) for s in os.environ.get("LMPRETRAIN_SHAKESPEARE_SEEDS", "1337").split(","))


def run(tmp_path, seed):
    cfg = make_cfg(tmp_path / str(seed), ["experiment=shakespeare_char", "logger=csv", f"seed={seed}",
                                          "callbacks.rich_progress_bar=null", "trainer.enable_progress_bar=false"])
    datamodule, module, trainer = build(cfg)
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 2000
    # the whole validation split is evaluated: far more than nanoGPT's 20 batches x 12 blocks
    assert (datamodule.token_counts["val"] - 1) // 64 >= 20 * 12 and cfg.trainer.limit_val_batches == 1.0
    return float(trainer.callback_metrics["val/loss"])


@pytest.mark.slow
def test_shakespeare_char_reaches_nanogpt_loss(tmp_path):
    require_data("tinyshakespeare.txt")
    losses = {seed: run(tmp_path, seed) for seed in SEEDS}
    mean = sum(losses.values()) / len(losses)
    print(f"shakespeare_char val/loss at step 2000: {losses}, mean {mean:.4f}")
    assert max(losses.values()) <= 1.91, losses
    if len(losses) >= 3:  # the README's claim: the mean of three seeds
        assert mean <= 1.90, losses
