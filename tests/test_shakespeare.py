"""The real run: nanoGPT's CPU shakespeare_char config must reach val/loss <= 1.90 at step 2000."""

import pytest

from conftest import make_cfg, require_data
from lmpretrain.train import build


@pytest.mark.slow
def test_shakespeare_char_reaches_nanogpt_loss(tmp_path):
    require_data("tinyshakespeare.txt")
    cfg = make_cfg(tmp_path, ["experiment=shakespeare_char", "logger=csv", "callbacks.rich_progress_bar=null",
                              "trainer.enable_progress_bar=false"])
    datamodule, module, trainer = build(cfg)
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 2000
    # the whole validation split is evaluated: far more than nanoGPT's 20 batches x 12 blocks
    val_blocks = (datamodule.token_counts["val"] - 1) // 64
    assert val_blocks >= 20 * 12 and cfg.trainer.limit_val_batches == 1.0
    val_loss = float(trainer.callback_metrics["val/loss"])
    print(f"shakespeare_char val/loss at step 2000: {val_loss:.4f}")
    assert val_loss <= 1.90
