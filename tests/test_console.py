"""What a user sees: the console of a default run, the console scripts, and the debug presets."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import make_cfg
from lmpretrain.train import train


def _metrics(run_dir: Path, key: str) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return [float(r[key]) for r in csv.DictReader(f) if r.get(key)]


@pytest.mark.slow
def test_default_run_console_has_no_third_party_noise(tmp_path):
    """A default run (progress bar, csv + wandb offline) prints the step count, loss, tokens/s, the
    one-line wandb sync hint, and none of the tips, deprecation notices and empty fields it used to."""
    env = {**os.environ, "WANDB_MODE": "offline", "COLUMNS": "200"}
    env.pop("WANDB_SILENT", None)
    started = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "lmpretrain.train", "trainer.max_steps=4", "trainer.val_check_interval=2",
                        "trainer.limit_val_batches=2", "trainer.log_every_n_steps=2", "trainer.num_sanity_val_steps=0",
                        f"hydra.run.dir={tmp_path}"],
                       check=False, capture_output=True, text=True, env=env, timeout=600)
    wall = time.perf_counter() - started
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    # the start-up time is logged once, from the process's creation to the first step's end
    (startup,) = _metrics(tmp_path, "train/startup_s")
    assert 0.5 < startup < wall, (startup, wall)  # the imports alone take over half a second
    assert "first training step done" in out
    for noise in ["Tip:", "Epoch 0/-2", "FLOPs", "deprecated", "anonymous setting", "v_num", "Run history",
                  "was configured so"]:
        assert noise not in out, f"{noise!r} printed:\n{out[-3000:]}"
    for wanted in ["step 4/4", "train/loss", "tokens/s", "wandb sync"]:
        assert wanted in out, f"{wanted!r} missing:\n{out[-3000:]}"
    assert sum("wandb sync" in line for line in out.splitlines()) == 1


@pytest.mark.slow
def test_console_scripts_are_installed():
    """`lmp-train` and friends run the same Hydra entrypoints as `python -m lmpretrain.<name>`."""
    from importlib.metadata import entry_points

    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts") if ep.name.startswith("lmp-")}
    assert scripts == {"lmp-train": "lmpretrain.train:main", "lmp-finetune": "lmpretrain.finetune:main",
                       "lmp-evaluate": "lmpretrain.evaluate:main", "lmp-prepare": "lmpretrain.prepare.__main__:main",
                       "lmp-generate": "lmpretrain.generate:main", "lmp-inspect": "lmpretrain.inspect:main",
                       "lmp-plot": "lmpretrain.plot:main", "lmp-export": "lmpretrain.export.__main__:main"}
    exe = shutil.which("lmp-train", path=str(Path(sys.executable).parent))
    assert exe is not None
    r = subprocess.run([exe, "--cfg", "job", "trainer.max_steps=7"], check=False, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "max_steps: 7" in r.stdout


def test_debug_presets_compose():
    """Each preset sets what its name promises, for train and finetune alike."""
    for name in ["train", "finetune"]:
        limit = make_cfg(Path("/tmp/unused"), ["debug=limit"], config_name=name)
        assert (limit.trainer.limit_train_batches, limit.trainer.max_epochs, limit.trainer.max_steps) == (3, 3, -1)
        prof = make_cfg(Path("/tmp/unused"), ["debug=profiler"], config_name=name)
        assert prof.trainer.profiler._target_.endswith("SimpleProfiler")
        over = make_cfg(Path("/tmp/unused"), ["debug=overfit"], config_name=name)
        assert over.trainer.overfit_batches == 2 and over.callbacks.model_checkpoint.monitor == "train/loss"


def test_debug_profiler_writes_a_report(tmp_path):
    cfg = make_cfg(tmp_path, ["debug=profiler", "trainer.max_steps=3", "trainer.val_check_interval=3",
                              "trainer.limit_val_batches=1", "callbacks.rich_progress_bar=null",
                              "trainer.enable_progress_bar=false"])
    train(cfg)
    report = (tmp_path / "fit-profiler.txt").read_text()
    assert "run_training_batch" in report and "optimizer_step" in report


@pytest.mark.slow
def test_debug_overfit_memorizes_two_batches(tmp_path):
    """Two batches of tiny-shakespeare repeated: the loss goes from chance (ln 65 = 4.17 nats per
    character) to near zero; a model or objective that cannot do this has a bug."""
    cfg = make_cfg(tmp_path, ["debug=overfit", "callbacks.rich_progress_bar=null", "trainer.enable_progress_bar=false"])
    train(cfg)
    losses = _metrics(tmp_path, "train/loss")
    assert losses[0] > 3.5
    assert losses[-1] < 0.5, losses[-10:]


def test_progress_bar_redraws_at_most_every_interval_and_always_draws_the_last_step(tmp_path, monkeypatch):
    """Lightning redraws after every batch; ours skips a redraw within `min_redraw_s` of the last
    one, but the bar still ends on "step N/N" (the last batch is always drawn)."""
    from lmpretrain.callbacks.console import StepProgressBar

    drawn: list[tuple[int, str]] = []
    real_draw = StepProgressBar._draw

    def spy(self, trainer, pl_module, batch_idx):
        real_draw(self, trainer, pl_module, batch_idx)
        drawn.append((batch_idx, self._get_train_description(trainer.current_epoch).strip()))

    monkeypatch.setattr(StepProgressBar, "_draw", spy)
    monkeypatch.setattr(StepProgressBar, "min_redraw_s", 3600.0)  # only the first and the last batch
    train(make_cfg(tmp_path, ["trainer.max_steps=6", "trainer.val_check_interval=1000", "trainer.num_sanity_val_steps=0",
                              "logger=csv", "model.n_layer=1", "data.batch_size=2"]))
    assert drawn == [(0, "step 1/6"), (5, "step 6/6")], drawn

    drawn.clear()
    monkeypatch.setattr(StepProgressBar, "min_redraw_s", 0.0)  # Lightning's behaviour: every batch
    train(make_cfg(tmp_path / "every", ["trainer.max_steps=6", "trainer.val_check_interval=1000",
                                        "trainer.num_sanity_val_steps=0", "logger=csv", "model.n_layer=1",
                                        "data.batch_size=2"]))
    assert [i for i, _ in drawn] == [0, 1, 2, 3, 4, 5], drawn


def test_model_summary_precision_notice_is_dropped():
    """bf16-mixed (every GPU run's default) made Lightning's summary warn that it sizes the model in
    32 bits; ours says "MB in fp32" itself, so the notice is dropped, and other warnings still show."""
    import warnings

    from lightning.pytorch.utilities.rank_zero import rank_zero_warn

    from lmpretrain.callbacks.console import quiet_third_party

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")  # shown every time, unless a filter added after this drops it
        quiet_third_party()
        rank_zero_warn("Precision bf16-mixed is not supported by the model summary.  Estimated model size in MB "
                       "will not be accurate. Using 32 bits instead.", category=UserWarning)
        warnings.warn("a warning of our own", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["a warning of our own"]
