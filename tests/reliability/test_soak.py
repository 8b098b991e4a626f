"""bench/soak.py in short: a 2-process DDP run on CPU killed with SIGKILL twice and resumed from its
last.ckpt logs the same losses at every step as an uninterrupted run and ends with bit-identical weights."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parents[2] / "bench" / "soak.py"


@pytest.mark.slow
def test_ddp_killed_twice_and_resumed_equals_the_uninterrupted_run(tmp_path):
    """200 steps, checkpoints every 20, a kill -9 after about every 60 steps; ~90 s."""
    r = subprocess.run([sys.executable, str(SOAK), "--steps", "200", "--kill-every", "60", "--save-every", "20",
                        "--out", str(tmp_path / "soak")], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads(r.stdout[: r.stdout.rindex("}") + 1])
    assert result["kills"] >= 2 and result["segments"] >= 3, result
    assert result["losses_different"] == 0 and result["losses_compared"] >= 200, result
    assert result["final_step"] == 200 and result["final_weights_identical"], result
    assert result["final_val_loss"]["killed"] == result["final_val_loss"]["uninterrupted"]
