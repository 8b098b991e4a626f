"""Global batch -> accumulation, precision=auto, and strategy checks, before anything trains."""

import re

import pytest
import torch
from fit_worker import GlobalLoss

from conftest import make_cfg
from lmpretrain.distributed import accumulation_for, resolve_precision, world_size
from lmpretrain.errors import ConfigError, find_user_error
from lmpretrain.train import build

SHORT = ["debug=fast", "trainer.max_steps=6", "scheduler.warmup_steps=2", "scheduler.max_steps=6",
         "trainer.val_check_interval=100", "optimizer.lr=3e-3"]


def test_accumulation_keeps_global_batch_fixed():
    assert accumulation_for(64, 8, 1, 1) == 8
    assert accumulation_for(64, 8, 4, 1) == 2
    assert accumulation_for(64, 8, 8, 1) == 1
    assert accumulation_for(None, 8, 4, 3) == 3  # no global batch: accumulation as configured
    with pytest.raises(ConfigError, match=r"global_batch_size=60 is not a multiple of data.batch_size \(8\) x "
                                          r"devices x nodes \(2\) = 16"):
        accumulation_for(60, 8, 2, 1)
    with pytest.raises(ConfigError, match="trainer.accumulate_grad_batches=3 contradicts global_batch_size=64"):
        accumulation_for(64, 8, 2, 3)


def test_world_size_from_devices_and_nodes():
    assert world_size(2, 1, "cpu") == 2
    assert world_size([0, 1, 2], 2, "gpu") == 6
    assert world_size("auto", 1, "cpu") == 1


def test_precision_auto_and_unsupported_on_cpu():
    assert resolve_precision("auto", "cpu") == "32-true"
    assert resolve_precision("auto", "auto") == ("bf16-mixed" if torch.cuda.is_available() else "32-true")
    assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"  # works, slowly
    with pytest.raises(ConfigError, match="precision=16-mixed .* needs a GPU; on CPU use precision=32-true"):
        resolve_precision("16-mixed", "cpu")
    with pytest.raises(ConfigError, match="precision='fp8' is unknown"):
        resolve_precision("fp8", "cpu")


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["strategy=fsdp"], "strategy=fsdp shards over processes but trainer.devices x trainer.num_nodes = 1"),
        (["global_batch_size=30", "data.batch_size=4"], "global_batch_size=30 is not a multiple of"),
        (["precision=16-mixed", "trainer.accelerator=cpu"], "precision=16-mixed"),
        (["strategy=fsdp", "trainer.devices=2", "trainer.strategy.sharding=zero2"], "sharding='zero2' must be"),
    ],
)
def test_impossible_setups_fail_in_build(tmp_path, overrides, message):
    with pytest.raises(Exception) as info:  # Hydra's instantiate wraps errors raised in constructors
        build(make_cfg(tmp_path, ["debug=fast", *overrides]))
    assert isinstance(find_user_error(info.value), ConfigError)
    assert re.search(message, str(find_user_error(info.value)))


def fit(tmp_path, overrides):
    datamodule, module, trainer = build(make_cfg(tmp_path, SHORT + overrides))
    rec = GlobalLoss()
    trainer.callbacks.append(rec)
    trainer.fit(module, datamodule=datamodule)
    return rec.loss, trainer, module


def test_accumulation_gives_the_loss_curve_of_the_full_batch(tmp_path):
    full, _, _ = fit(tmp_path / "a", ["data.batch_size=8"])
    accumulated, trainer, _ = fit(tmp_path / "b", ["data.batch_size=4", "global_batch_size=8"])
    assert trainer.accumulate_grad_batches == 2 and sorted(accumulated) == list(range(1, 7))
    for step in range(1, 7):
        assert accumulated[step] == pytest.approx(full[step], rel=1e-5), step


@pytest.mark.slow  # bf16 matmuls are 10-50x slower than fp32 on this CPU
def test_bf16_on_cpu_trains_close_to_fp32(tmp_path):
    fp32, _, _ = fit(tmp_path / "a", ["precision=32-true"])
    mixed, trainer, module = fit(tmp_path / "b", ["precision=bf16-mixed"])
    assert trainer.precision == "bf16-mixed" and module.network.lm_head.weight.dtype == torch.float32
    true, trainer, module = fit(tmp_path / "c", ["precision=bf16-true"])
    assert trainer.precision == "bf16-true" and module.network.lm_head.weight.dtype == torch.bfloat16
    for step in range(1, 7):  # bf16 keeps ~3 significant digits
        assert mixed[step] == pytest.approx(fp32[step], rel=2e-2), step
        assert true[step] == pytest.approx(fp32[step], rel=3e-2), step
    assert fp32[1] != mixed[1]  # autocast really ran in bf16
