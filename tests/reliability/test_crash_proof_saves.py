"""Checkpoints survive kill -9 and a full disk: written to a temp file in the checkpoint folder,
fsynced, renamed; temp files of killed saves are removed when the next run starts."""

import errno
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import pytest
import torch

import lmpretrain.atomic
from conftest import make_cfg
from lmpretrain.atomic import TMP_SUFFIX, DiskFullError, atomic_write_json, remove_orphans
from lmpretrain.checkpoints import AtomicCheckpointIO
from lmpretrain.errors import find_user_error
from lmpretrain.train import build

HERE = Path(__file__).parent


@pytest.fixture
def run_folder(tmp_path):
    """A folder on another filesystem than $TMPDIR where the machine has one (/dev/shm), so a save
    that staged its temp file in $TMPDIR would have to copy over the old checkpoint."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != Path(tempfile.gettempdir()).stat().st_dev:
        folder = Path(tempfile.mkdtemp(dir=shm, prefix="lmpretrain-test-"))
        yield folder
        shutil.rmtree(folder, ignore_errors=True)
    else:
        yield tmp_path


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def kill_during_saves(folder: Path, kills: int, how: str, seed: int) -> int:
    """Start save_loop.py, kill -9 it at a random moment, check last.ckpt, clean up as the next run
    does; `kills` times. Returns how many kills left a temp file (landed mid-write)."""
    rng = random.Random(seed)
    mid_write = 0
    for _ in range(kills):
        child = subprocess.Popen([sys.executable, str(HERE / "save_loop.py"), str(folder), "4000000", how],
                                 stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        reported = int(child.stdout.readline())  # one save done: the loop is running
        time.sleep(rng.uniform(0.0, 0.3))
        child.kill()  # SIGKILL
        child.wait()
        rest = child.stdout.read().split()
        reported = int(rest[-1]) if rest else reported
        ckpt = torch.load(folder / "last.ckpt", weights_only=True)
        assert ckpt["n"] >= reported
        for t in ckpt["state_dict"].values():
            assert torch.equal(t, torch.full_like(t, float(ckpt["n"]))), "a mix of two saves"
        mid_write += bool(remove_orphans(folder))  # what the next run does first
        assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]
    return mid_write


def test_kill_9_at_random_moments_leaves_last_ckpt_loadable(run_folder):
    """4 kill -9s of a process saving a 16 MB last.ckpt in a loop: after each, last.ckpt loads with
    weights_only=True and holds one whole save (every value = its counter, at least the last one
    reported), and the next run's cleanup leaves no temp file."""
    mid_write = kill_during_saves(run_folder, kills=4, how="atomic", seed=0)
    print(f"{mid_write} of 4 kills landed mid-write")


def kill_mid_write(folder: Path, how: str) -> list[Path]:
    """Kill -9 a saver that stopped half-way through writing its second save (save_loop.py's
    `stall`): last.ckpt must still be the first save, whole; returns what the cleanup removed."""
    child = subprocess.Popen([sys.executable, str(HERE / "save_loop.py"), str(folder), "4000000", how, "stall"],
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert child.stdout.readline().strip() == "1"
    assert child.stdout.readline().strip() == "mid", "the second save never started writing"
    child.kill()
    child.wait()
    ckpt = torch.load(folder / "last.ckpt", weights_only=True)
    assert ckpt["n"] == 1 and all(torch.equal(t, torch.ones_like(t)) for t in ckpt["state_dict"].values())
    removed = remove_orphans(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]
    return removed


@pytest.mark.slow
def test_kill_9_during_plugin_saves_many_times(run_folder):
    """The same with the Trainer's AtomicCheckpointIO itself: 12 kills at random moments (some may
    land between writes), then one that lands mid-write for certain and leaves a half-written
    temp file, which the next run's cleanup removes."""
    mid_write = kill_during_saves(run_folder, kills=12, how="plugin", seed=1)
    print(f"{mid_write} of 12 random kills landed mid-write")
    removed = kill_mid_write(run_folder, how="plugin")
    assert len(removed) == 1 and removed[0].name.startswith(".last.ckpt.") and removed[0].name.endswith(TMP_SUFFIX)


def test_disk_full_is_one_error_and_keeps_the_previous_file(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"n": 1, "w": torch.ones(100_000)}, path)
    real_write = os.write

    def write_half_then_fill(fd, data):  # the disk fills after part of the file went out
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(lmpretrain.atomic.os, "write", write_half_then_fill)
    with pytest.raises(DiskFullError) as e:
        io.save_checkpoint({"n": 2, "w": torch.full((100_000,), 2.0)}, path)
    monkeypatch.undo()
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"disk full writing {path}") and "unchanged" in message
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["n"] == 1 and torch.equal(ckpt["w"], torch.ones(100_000))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no partial temp file left


def test_a_save_streams_to_disk_without_a_copy_of_the_checkpoint_in_memory(tmp_path):
    """torch.save writes into the temp file through a 1 MB buffer: Python allocates a small fraction
    of the 40 MB checkpoint while saving (serializing into io.BytesIO first, as Lightning's own save
    does, allocates all of it at once, and more while the buffer grows), and the file loads whole."""
    import tracemalloc

    weights = torch.arange(10_000_000, dtype=torch.float32)
    path = tmp_path / "last.ckpt"
    tracemalloc.start()
    try:
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": weights}}, path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8e6, f"{peak / 1e6:.1f} MB allocated while saving a 40 MB checkpoint"
    assert torch.equal(torch.load(path, weights_only=True)["state_dict"]["w"], weights)
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


class FillDiskAfterStep(L.Callback):
    def __init__(self, monkeypatch, step):
        self.monkeypatch, self.step = monkeypatch, step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            def full(fd, data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            self.monkeypatch.setattr(lmpretrain.atomic.os, "write", full)


def test_disk_full_during_training_stops_with_one_line_and_keeps_checkpoints(tmp_path, monkeypatch):
    """Saves at step 2 succeed; the disk is full at step 4: the run stops with DiskFullError (one
    line via the entrypoint) and both step-2 checkpoints (best and last) still load."""
    datamodule, module, trainer = build(make_cfg(tmp_path, ["debug=fast"]))
    trainer.callbacks.append(FillDiskAfterStep(monkeypatch, step=3))
    with pytest.raises(Exception) as e:
        trainer.fit(module, datamodule=datamodule)
    monkeypatch.undo()
    err = find_user_error(e.value)
    assert isinstance(err, DiskFullError) and "\n" not in str(err), e.value
    folder = tmp_path / "checkpoints"
    names = sorted(p.name for p in folder.iterdir())
    assert len(names) == 2 and names[0] == "last.ckpt" and names[1].startswith("step000002-"), names
    for name in names:
        assert torch.load(folder / name, weights_only=True)["global_step"] == 2


def test_next_run_removes_only_orphans_of_dead_writers(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    orphan = folder / f".last.ckpt.{dead_pid()}{TMP_SUFFIX}"
    orphan.write_bytes(b"half a checkpoint")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        in_progress = folder / f".last.ckpt.{sleeper.pid}{TMP_SUFFIX}"  # a save still being written
        in_progress.write_bytes(b"x")
        user_files = [folder / ".notes.tmp", folder / "mine.ckpt.tmp", folder / f"x{TMP_SUFFIX}"]
        for f in user_files:
            f.write_text("keep me")
        build(make_cfg(tmp_path, ["debug=fast"]))  # a run starts with this checkpoint folder
        assert not orphan.exists()
        assert in_progress.exists() and all(f.read_text() == "keep me" for f in user_files)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_atomic_write_leaves_temp_in_destination_and_nothing_after(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append((Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(lmpretrain.atomic.os, "replace", spy)
    atomic_write_json(tmp_path / "manifest.json", {"a": 1})
    (src, dst), = seen
    assert src.parent == dst.parent == tmp_path and src.name.endswith(TMP_SUFFIX)
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
