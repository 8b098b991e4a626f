"""A -m sweep in which some jobs have a bad config: the other jobs run to the end, every failed job is
named with its overrides and its one-line error, and the sweep exits non-zero."""

import os
import re
import subprocess
import sys

import pytest
import torch


@pytest.mark.slow
def test_sweep_with_bad_jobs_completes_the_others_and_names_each_failure(tmp_path):
    """n_head=5 and 3 cannot split 128 dims; n_head=4 between them trains. ~30 s."""
    r = subprocess.run([sys.executable, "-m", "lmpretrain.train", "-m", "debug=fast", "trainer.max_steps=2",
                        "trainer.val_check_interval=2", "model.n_head=5,4,3", f"hydra.sweep.dir={tmp_path}"],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 1, r.stderr[-3000:]  # Hydra's status for a sweep with failed jobs
    failures = re.findall(r"^error: sweep job #(\d) \((.*)\) failed: (.*)$", r.stderr, flags=re.M)
    assert failures == [
        ("0", "debug=fast trainer.max_steps=2 trainer.val_check_interval=2 model.n_head=5",
         "model.n_embd=128 must be divisible by model.n_head=5"),
        ("2", "debug=fast trainer.max_steps=2 trainer.val_check_interval=2 model.n_head=3",
         "model.n_embd=128 must be divisible by model.n_head=3"),
    ], r.stderr[-3000:]
    assert torch.load(tmp_path / "1" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert not list((tmp_path / "0").rglob("*.ckpt")) and not list((tmp_path / "2").rglob("*.ckpt"))
