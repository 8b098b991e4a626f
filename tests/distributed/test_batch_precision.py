"""Global batch -> accumulation, precision=auto, and strategy checks, before anything trains."""

import re

import pytest
import torch
from fit_worker import GlobalLoss

from conftest import make_cfg
from lmpretrain.distributed.parallel import clip_grad_norm_, tensor_parallel_plan
from lmpretrain.distributed.trainer_config import (
    accumulation_for,
    resolve_precision,
    resolve_trainer_config,
    world_size,
)
from lmpretrain.errors import ConfigError, find_user_error
from lmpretrain.models import build_network
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


def test_tensor_parallel_groups_read_one_batch(tmp_path):
    """4 processes, 2 per tensor-parallel group: 2 data-parallel ranks, so a global batch of 16 with
    micro-batches of 4 needs 2 accumulation steps (not 1, as 4 independent processes would)."""
    cfg = make_cfg(tmp_path, ["strategy=fsdp", "trainer.devices=4", "trainer.strategy.tensor_parallel=2",
                              "global_batch_size=16", "data.batch_size=4"])
    assert resolve_trainer_config(cfg).accumulate_grad_batches == 2
    cfg = make_cfg(tmp_path, ["strategy=fsdp", "trainer.devices=4", "global_batch_size=16", "data.batch_size=4"])
    assert resolve_trainer_config(cfg).accumulate_grad_batches == 1


def test_tensor_parallel_plan_splits_every_block_matrix():
    network = build_network({"arch": "t5", "vocab_size": 50, "block_size": 16, "n_layer": 1, "n_head": 2,
                             "n_embd": 16})
    plan = {name: type(style).__name__ for name, style in tensor_parallel_plan(network).items()}
    for prefix in ("encoder.0.attn", "decoder.0.attn", "decoder.0.cross_attn"):
        assert [plan[f"{prefix}.{p}"] for p in ("q", "k", "v", "proj")] == ["ColwiseParallel"] * 3 + ["RowwiseParallel"]
    assert plan["decoder.0.mlp.fc"] == "ColwiseParallel" and plan["decoder.0.mlp.proj"] == "RowwiseParallel"
    linears = {n for n, m in network.named_modules() if isinstance(m, torch.nn.Linear)}
    assert linears - set(plan) == {"lm_head"}  # the (tied) head stays replicated


def test_clip_grad_norm_matches_torch():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(5, 7), torch.nn.Linear(5, 7)
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 5)
    for m in (a, b):
        (m(x) ** 2).sum().mul(10).backward()
    total = clip_grad_norm_(a.parameters(), 0.5)
    expected = torch.nn.utils.clip_grad_norm_(b.parameters(), 0.5)
    assert total == pytest.approx(float(expected), rel=1e-6) and total > 0.5
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad)


@pytest.mark.parametrize("experiment,unused", [("shakespeare_char", False), ("bert_mlm_tiny", True),
                                                ("t5_span_tiny", False)])
def test_ddp_looks_for_unused_parameters_only_when_an_objective_leaves_some(tmp_path, experiment, unused):
    cfg = make_cfg(tmp_path, [f"experiment={experiment}", "debug=fast", "strategy=ddp", "trainer.devices=2",
                              "trainer.accelerator=cpu", "global_batch_size=null"])
    _, _, trainer = build(cfg)
    assert trainer.strategy._ddp_kwargs["find_unused_parameters"] is unused


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
        (["strategy=fsdp", "trainer.devices=2", "trainer.strategy.tensor_parallel=3"],
         "tensor_parallel=3 must divide the 2 processes"),
        (["strategy=fsdp", "trainer.devices=4", "trainer.strategy.tensor_parallel=4", "model.n_head=2",
          "model.n_embd=64"], r"model.n_head=2 is not divisible by trainer.strategy.tensor_parallel=4"),
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
    # two narrow layers: bf16 is emulated on AVX2 CPUs, and the comparison needs no more than this
    small = ["model.n_layer=2", "model.n_embd=64", "model.n_head=2"]
    fp32, _, _ = fit(tmp_path / "a", ["precision=32-true", *small])
    mixed, trainer, module = fit(tmp_path / "b", ["precision=bf16-mixed", *small])
    assert trainer.precision == "bf16-mixed" and module.network.lm_head.weight.dtype == torch.float32
    true, trainer, module = fit(tmp_path / "c", ["precision=bf16-true", *small])
    assert trainer.precision == "bf16-true" and module.network.lm_head.weight.dtype == torch.bfloat16
    for step in range(1, 7):  # bf16 keeps ~3 significant digits
        assert mixed[step] == pytest.approx(fp32[step], rel=2e-2), step
        assert true[step] == pytest.approx(fp32[step], rel=3e-2), step
    assert fp32[1] != mixed[1]  # autocast really ran in bf16
