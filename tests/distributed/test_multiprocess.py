"""DDP, FSDP2 (full and hybrid), tensor parallelism and 2D FSDP x TP over 2-4 CPU processes (gloo)
follow the same loss curve as one process with the same global batch; sharded checkpoints resume and
consolidate into one loadable file; MLM (heads called outside forward) and the fused loss run sharded."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_cfg
from lmpretrain.distributed.consolidate import consolidate_checkpoint
from lmpretrain.objectives import CausalLMModule
from lmpretrain.objectives.causal_lm import causal_lm_loss
from lmpretrain.train import build

WORKER = Path(__file__).with_name("fit_worker.py")
# gpt_tiny without dropout; 8 sequences per optimizer step whatever the process count.
COMMON = ["debug=fast", "global_batch_size=8", "trainer.max_steps=12", "scheduler.warmup_steps=2",
          "scheduler.max_steps=12", "trainer.val_check_interval=4", "trainer.limit_val_batches=2",
          "trainer.accelerator=cpu", "optimizer.lr=3e-3"]
ONE_PROCESS = ["data.batch_size=8"]
TWO_PROCESSES = ["data.batch_size=4", "trainer.devices=2"]


# bert_mlm_tiny without dropout (tensor-parallel ranks draw attention dropout for their own heads).
MLM = ["experiment=bert_mlm_tiny", "debug=fast", "global_batch_size=8", "trainer.max_steps=6",
       "trainer.val_check_interval=3", "trainer.limit_val_batches=2", "trainer.accelerator=cpu", "model.dropout=0.0"]


def run(out: Path, *overrides: str, common=COMMON) -> dict:
    out.parent.mkdir(parents=True, exist_ok=True)
    # One thread per process: 2 processes on 2 cores, and reproducible reductions.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(WORKER), str(out), *common, *overrides], capture_output=True,
                       text=True, timeout=300, env=env, cwd=out.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    result["loss"] = {int(k): v for k, v in result["loss"].items()}
    result["val"] = {int(k): v for k, v in result["val"].items()}
    return result


def assert_same_curve(a: dict, b: dict, steps) -> None:
    for step in steps:
        assert b[step] == pytest.approx(a[step], rel=2e-5, abs=2e-5), (step, a[step], b[step])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return run(tmp_path_factory.mktemp("one") / "out.json", *ONE_PROCESS)


def test_ddp_two_processes_match_one_process(reference, tmp_path):
    ddp = run(tmp_path / "out.json", *TWO_PROCESSES, "strategy=ddp")
    assert (reference["world_size"], reference["accumulate"]) == (1, 1)
    assert (ddp["world_size"], ddp["accumulate"]) == (2, 1)
    assert sorted(ddp["loss"]) == list(range(1, 13))
    assert reference["loss"][12] < reference["loss"][1] - 0.5  # it trains, so the curves are not flat
    assert_same_curve(reference["loss"], ddp["loss"], range(1, 13))
    assert_same_curve(reference["val"], ddp["val"], [4, 8, 12])


@pytest.mark.slow  # 3 two-process runs: ~45 s
@pytest.mark.parametrize("layout", ["fsdp", "tensor_parallel"])
def test_sharded_run_matches_one_process_and_its_checkpoint_resumes_and_consolidates(reference, tmp_path, layout):
    """fsdp: 2 data-parallel ranks, each half of the batch, parameters sharded; its first run uses the
    chunked fused loss, the resumed one the plain loss (a runtime option, not part of the model).
    tensor_parallel: both processes read the whole batch and hold half of every block's heads and MLP."""
    if layout == "fsdp":
        processes, first_only = TWO_PROCESSES + ["strategy=fsdp"], ["runtime.fused_loss=true", "runtime.loss_chunk_tokens=100"]
    else:
        processes, first_only = ["data.batch_size=8", "trainer.devices=2", "strategy=fsdp",
                                 "trainer.strategy.tensor_parallel=2"], []
    first = run(tmp_path / "out.json", *processes, *first_only, "trainer.max_steps=8")
    assert first["param_types"] == ["DTensor"] and first["accumulate"] == 1  # really sharded
    assert_same_curve(reference["loss"], first["loss"], range(1, 9))
    assert_same_curve(reference["val"], first["val"], [4, 8])

    last = tmp_path / "checkpoints" / "last.ckpt"
    assert sorted(p.name for p in last.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]
    single = consolidate_checkpoint(last, tmp_path / "step8.ckpt")  # before the resumed run overwrites last
    resumed = run(tmp_path / "resumed.json", *processes, f"ckpt={last}")
    assert sorted(resumed["loss"]) == list(range(9, 13))
    assert_same_curve(reference["loss"], resumed["loss"], range(9, 13))
    assert_same_curve(reference["val"], resumed["val"], [12])

    module = CausalLMModule.load_from_checkpoint(single, weights_only=False)
    assert torch.load(single, weights_only=False)["global_step"] == 8 and module.tokenizer_json
    # The consolidated weights give, in one process, the val/loss the two ranks measured at step 8.
    datamodule, _, _ = build(make_cfg(tmp_path / "eval", COMMON + ONE_PROCESS))
    datamodule.setup("validate")
    nll = n = 0.0
    with torch.no_grad():
        for batch, _ in zip(datamodule.val_dataloader(), range(2)):
            count = (batch["labels"] != -100).sum()
            nll += float(causal_lm_loss(module.network, batch, module.runtime)) * count
            n += count
    assert nll / n == pytest.approx(first["val"][8], rel=1e-5)


def test_consolidate_cli_refuses_a_folder_that_is_not_sharded_with_one_line(tmp_path):
    (tmp_path / "last.ckpt").mkdir()
    r = subprocess.run([sys.executable, "-m", "lmpretrain.distributed", "consolidate", str(tmp_path / "last.ckpt")],
                       check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == "", r.stderr[-2000:]
    assert r.stderr.strip() == f"error: {tmp_path / 'last.ckpt'} is not a sharded checkpoint folder (no meta.pt); " \
                               f"it may already be one file"


@pytest.mark.slow  # ~20 s
def test_two_nodes_started_by_torchrun_match_one_process(reference, tmp_path):
    """Multi-node as on a cluster: two torchrun agents (node ranks 0 and 1, one process each) meet at a
    rendezvous address; Lightning reads torchrun's environment instead of starting processes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out.json"
    args = [*COMMON, "data.batch_size=4", "trainer.num_nodes=2", "trainer.devices=1", "strategy=ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [
        subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                          f"--node_rank={rank}", "--master_addr=127.0.0.1", f"--master_port={port}",
                          str(WORKER), str(out), *args], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in (0, 1)
    ]
    logs = [node.communicate(timeout=300)[0] for node in nodes]
    assert all(node.returncode == 0 for node in nodes), logs[0][-3000:] + logs[1][-3000:]
    result = json.loads(out.read_text())
    assert result["world_size"] == 2
    assert_same_curve(reference["loss"], {int(k): v for k, v in result["loss"].items()}, range(1, 13))


@pytest.mark.slow  # 4 processes on 2 cores: ~25 s
def test_fsdp_times_tensor_parallel_on_four_processes_matches_one_process(reference, tmp_path):
    """2D: 2 data-parallel ranks x 2 tensor-parallel ranks; micro-batch 4 x 2 data ranks = 8."""
    out = run(tmp_path / "out.json", "data.batch_size=4", "trainer.devices=4", "strategy=fsdp",
              "trainer.strategy.tensor_parallel=2", "trainer.max_steps=6")
    assert (out["world_size"], out["accumulate"], out["param_types"]) == (4, 1, ["DTensor"])
    assert_same_curve(reference["loss"], out["loss"], range(1, 7))
    assert_same_curve(reference["val"], out["val"], [4])


@pytest.mark.slow  # 2 two-process runs: ~30 s
def test_hybrid_sharding_matches_one_process(reference, tmp_path):
    """HSDP with 2 shard groups of 1 (replicate across, shard within) and 1 group of 2."""
    for shard_size in (1, 2):
        out = run(tmp_path / f"hsdp{shard_size}.json", *TWO_PROCESSES, "strategy=fsdp", "trainer.max_steps=6",
                  "trainer.strategy.sharding=hybrid", f"trainer.strategy.shard_size={shard_size}")
        assert out["param_types"] == ["DTensor"]
        assert_same_curve(reference["loss"], out["loss"], range(1, 7))


@pytest.mark.slow  # 4 runs: ~60 s
def test_masked_lm_sharded_and_tensor_parallel(tmp_path):
    """MLM calls the encoder's `features` and heads outside `forward`: FSDP gathers them too (same
    curve as DDP, same data and masks per rank), and tensor parallelism matches one process."""
    ddp = run(tmp_path / "ddp.json", "data.batch_size=4", "trainer.devices=2", "strategy=ddp", common=MLM)
    fsdp = run(tmp_path / "fsdp.json", "data.batch_size=4", "trainer.devices=2", "strategy=fsdp", common=MLM)
    assert fsdp["param_types"] == ["DTensor"] and ddp["param_types"] == ["Parameter"]
    assert_same_curve(ddp["loss"], fsdp["loss"], range(1, 7))
    assert_same_curve(ddp["val"], fsdp["val"], [3, 6])
    one = run(tmp_path / "one.json", "data.batch_size=8", common=MLM)
    tp = run(tmp_path / "tp.json", "data.batch_size=8", "trainer.devices=2", "strategy=fsdp",
             "trainer.strategy.tensor_parallel=2", common=MLM)
    assert_same_curve(one["loss"], tp["loss"], range(1, 7))
    assert_same_curve(one["val"], tp["val"], [3, 6])
    assert one["loss"] != ddp["loss"]  # data-parallel ranks draw their own masks


def test_electra_under_ddp_keeps_the_generator_replicas_equal(tmp_path):
    """ELECTRA trains a generator and a detection head outside the network: DDP must average their
    gradients too, or the ranks' generators drift apart (and with them the replacements)."""
    electra = ["experiment=electra_tiny", *MLM[1:]]
    ddp = run(tmp_path / "ddp.json", "data.batch_size=4", "trainer.devices=2", "strategy=ddp", common=electra)
    assert ddp["param_types"] == ["Parameter"] and ddp["world_size"] == 2
    assert sorted(ddp["loss"]) == list(range(1, 7))
    assert ddp["replica_spread"] == 0.0


@pytest.mark.slow
def test_fsdp_check_bench_matches_plain_and_resumes_exactly_on_cpu():
    """bench/fsdp_check.py, the GPU check of FSDP2 (README "On a GPU"), on CPU with gloo: one process
    holds every shard, so its curve equals the plain strategy's and the resume from its sharded
    checkpoint equals the uninterrupted run, to float32 rounding (tolerance 1e-5)."""
    from lmpretrain.paths import repo_root

    out = subprocess.run([sys.executable, str(repo_root() / "bench" / "fsdp_check.py"), "--device", "cpu",
                          "--model", "gpt_tiny", "--steps", "6", "--batch-size", "2"],
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "sharded checkpoint: a folder of shards" in out.stdout
    diffs = re.search(r"max \|fsdp - plain\| = (\S+); max \|resumed - fsdp\| = (\S+) ", out.stdout)
    assert float(diffs.group(1)) <= 1e-5 and float(diffs.group(2)) <= 1e-5, out.stdout[-1500:]
    assert "resumed steps 6 of 6" in out.stdout
