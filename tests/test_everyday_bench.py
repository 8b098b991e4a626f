"""bench/everyday.py (issue 13's whole-command comparison): its nanoGPT log parsing on a known log,
and the whole bench on a few steps with a stand-in nanoGPT clone that prints nanoGPT's log format, so
the plumbing (copy, prepare, run, parse, ratios) is checked without nanoGPT's code in this repository."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require_data

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import everyday


def nanogpt_log(times_ms: list[float], evals: tuple[int, ...]) -> str:
    lines = []
    for it, ms in enumerate(times_ms):
        if it in evals:
            lines.append(f"step {it}: train loss 4.0000, val loss 3.{it:04d}")
        lines.append(f"iter {it}: loss 2.5000, time {ms:.2f}ms, mfu -100.00%")
    return "\n".join(lines)


def test_nanogpt_rates_are_10_iteration_windows_without_evaluations():
    # 41 iterations: 0 (evaluates) + 1-20 at 50 ms, 21-25 at 40 ms, 26 evaluates (1000 ms), 27-40 at 60 ms.
    times = [900.0] + [50.0] * 20 + [40.0] * 5 + [1000.0] + [60.0] * 14
    rates = everyday.nanogpt_rates(nanogpt_log(times, evals=(0, 26)), tokens_per_iter=768)
    # Windows: 1-10 and 11-20 (50 ms each); 21-25 is cut by the evaluation at 26; 27-36 (60 ms); 37-40 too short.
    assert rates == pytest.approx([768 / 0.05, 768 / 0.05, 768 / 0.06])


FAKE_TRAIN = '''import sys
args = dict(a[2:].split("=", 1) for a in sys.argv[2:])
assert sys.argv[1] == "config/train_shakespeare_char.py" and args["device"] == "cpu", sys.argv
assert open("data/shakespeare_char/train.bin").read() == "prepared"
steps = int(args["max_iters"])
for it in range(steps + 1):
    if it % 20 == 0:
        print(f"step {it}: train loss 3.0000, val loss 2.5000")
    print(f"iter {it}: loss 2.9000, time 40.00ms, mfu -100.00%")
'''
FAKE_PREPARE = '''import os
here = os.path.dirname(__file__)
assert "First Citizen" in open(os.path.join(here, "input.txt")).read()  # tiny-shakespeare from the data root
open(os.path.join(here, "train.bin"), "w").write("prepared")
'''


@pytest.mark.slow
def test_the_bench_runs_all_three_programs_and_writes_their_figures(tmp_path):
    require_data("tinyshakespeare.txt")
    clone = tmp_path / "nanoGPT"
    for name in everyday.NANOGPT_FILES:
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        (clone / name).write_text("")
    (clone / "train.py").write_text(FAKE_TRAIN)
    (clone / "data/shakespeare_char/prepare.py").write_text(FAKE_PREPARE)
    results = tmp_path / "results.json"
    out = subprocess.run([sys.executable, str(REPO / "bench" / "everyday.py"), "--steps", "30", "--repeats", "1",
                          "--nanogpt", str(clone), "--results", str(results)],
                         check=False, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    best = json.loads(results.read_text())["best"]
    assert best["nanogpt"]["tokens_per_sec"] == pytest.approx(768 / 0.04)  # the stand-in's 40 ms iterations
    assert best["nanogpt"]["val_loss"] == 2.5
    for program in ("lmpretrain", "bare"):
        assert best[program]["tokens_per_sec"] > 0 and best[program]["rss_mb"] > 100, best[program]
    assert not (clone / "data/shakespeare_char/input.txt").exists()  # the clone is left as it was
    assert "training tokens/s (median)" in out.stdout and "nanogpt" in out.stdout


def test_a_clone_without_nanogpt_files_is_one_error_line(tmp_path):
    with pytest.raises(SystemExit, match=r"error: --nanogpt .* has no train.py; give a clone of"):
        everyday.nanogpt_copy(tmp_path, tmp_path / "work")
