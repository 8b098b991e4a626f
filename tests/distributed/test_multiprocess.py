"""DDP and FSDP2 over 2 CPU processes (gloo) follow the same loss curve as one process with the same
global batch; a sharded checkpoint resumes, and consolidates into one loadable file."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_cfg
from lmpretrain.distributed import consolidate_checkpoint
from lmpretrain.objectives import CausalLMModule
from lmpretrain.train import build

WORKER = Path(__file__).with_name("fit_worker.py")
# gpt_tiny without dropout; 8 sequences per optimizer step whatever the process count.
COMMON = ["debug=fast", "global_batch_size=8", "trainer.max_steps=12", "scheduler.warmup_steps=2",
          "scheduler.max_steps=12", "trainer.val_check_interval=4", "trainer.limit_val_batches=2",
          "trainer.accelerator=cpu", "optimizer.lr=3e-3"]
ONE_PROCESS = ["data.batch_size=8"]
TWO_PROCESSES = ["data.batch_size=4", "trainer.devices=2"]


def run(out: Path, *overrides: str) -> dict:
    out.parent.mkdir(parents=True, exist_ok=True)
    # One thread per process: 2 processes on 2 cores, and reproducible reductions.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(WORKER), str(out), *COMMON, *overrides], capture_output=True,
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
def test_fsdp_matches_one_process_and_sharded_checkpoint_resumes_and_consolidates(reference, tmp_path):
    first = run(tmp_path / "out.json", *TWO_PROCESSES, "strategy=fsdp", "trainer.max_steps=8")
    assert first["param_types"] == ["DTensor"]  # really sharded
    assert_same_curve(reference["loss"], first["loss"], range(1, 9))
    assert_same_curve(reference["val"], first["val"], [4, 8])

    last = tmp_path / "checkpoints" / "last.ckpt"
    assert sorted(p.name for p in last.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]
    single = consolidate_checkpoint(last, tmp_path / "step8.ckpt")  # before the resumed run overwrites last
    resumed = run(tmp_path / "resumed.json", *TWO_PROCESSES, "strategy=fsdp", f"ckpt={last}")
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
            nll += float(module.loss(batch)) * count
            n += count
    assert nll / n == pytest.approx(first["val"][8], rel=1e-5)
