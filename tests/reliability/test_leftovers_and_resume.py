"""Issue 11, leftovers and resume: save_top_k=1 means one best checkpoint in the run folder after a
resume or a re-run into the same folder (no -v1 piles); the wandb run id travels with the checkpoint
so a resumed run continues that wandb run; a corpus too short for one block is reported before the
Trainer starts, naming the corpus file."""

import os
import re
from pathlib import Path

import pytest
import torch

from conftest import make_cfg
from lmpretrain.errors import DataError
from lmpretrain.train import build, train

FAST = ["debug=fast", "trainer.val_check_interval=2"]


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def best_of(folder: Path) -> list[str]:
    return [n for n in names(folder) if n != "last.ckpt"]


def test_resume_into_the_same_folder_replaces_the_old_best(tmp_path):
    train(make_cfg(tmp_path, [*FAST, "trainer.max_steps=4"]))
    ckpts = tmp_path / "checkpoints"
    [old] = best_of(ckpts)
    assert old.startswith("step000004-")
    train(make_cfg(tmp_path, [*FAST, "trainer.max_steps=8", f"ckpt_path={ckpts / 'last.ckpt'}"]))
    [new] = best_of(ckpts)  # exactly one: the better step-8 one replaced the step-4 one
    assert new.startswith("step000008-") and float(re.search(r"val_loss([\d.]+)\.ckpt", new)[1]) < \
        float(re.search(r"val_loss([\d.]+)\.ckpt", old)[1])
    state = torch.load(ckpts / "last.ckpt", weights_only=True)
    [mc] = [v for k, v in state["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert list(mc["best_k_models"]) == [str(ckpts / new)]  # the tracked best is the file on disk
    # Resumed into a new folder (the default: each run gets its own timestamped folder), Lightning keeps
    # no top-k state across folders: the new folder gets its own single best, the earlier one is untouched.
    before = {n: (ckpts / n).stat().st_mtime_ns for n in names(ckpts)}
    train(make_cfg(tmp_path / "next", [*FAST, "trainer.max_steps=10", f"ckpt_path={ckpts / 'last.ckpt'}"]))
    assert [n[:10] for n in best_of(tmp_path / "next" / "checkpoints")] == ["step000010"]
    assert {n: (ckpts / n).stat().st_mtime_ns for n in names(ckpts)} == before


def test_last_ckpt_is_saved_at_every_validation_even_without_a_new_best(tmp_path):
    """mode=max on a falling val/loss: only step 2 is ever the best; last.ckpt still follows each
    validation (Lightning alone leaves it at step 2: it saves last only with a new best)."""
    train(make_cfg(tmp_path, [*FAST, "trainer.max_steps=6", "callbacks.model_checkpoint.mode=max"]))
    ckpts = tmp_path / "checkpoints"
    assert [n[:10] for n in best_of(ckpts)] == ["step000002"]
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 6


def test_rerun_into_the_same_folder_does_not_pile_up_versions(tmp_path):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    (ckpts / "notes.txt").write_text("mine")  # a user's file: never touched
    for _ in range(3):
        train(make_cfg(tmp_path, [*FAST, "trainer.max_steps=4"]))
        assert names(ckpts) == ["last.ckpt", "notes.txt", "step000004-val_loss4.1073.ckpt"], names(ckpts)
    assert (ckpts / "notes.txt").read_text() == "mine"
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 4


def offline_run_ids(folder: Path) -> list[str]:
    return sorted(p.name.rsplit("-", 1)[1] for p in (folder / "wandb").glob("offline-run-*"))


def test_resumed_run_continues_the_same_wandb_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    first, second = tmp_path / "first", tmp_path / "second"
    train(make_cfg(first, [*FAST, "trainer.max_steps=2", "logger=wandb"]))
    [run_id] = offline_run_ids(first)
    last = first / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["wandb_run_id"] == run_id
    train(make_cfg(second, [*FAST, "trainer.max_steps=4", "logger=wandb", f"ckpt_path={last}"]))
    assert offline_run_ids(second) == [run_id]  # the same run, continued (resume="allow")
    assert torch.load(second / "checkpoints" / "last.ckpt", weights_only=True)["wandb_run_id"] == run_id
    train(make_cfg(tmp_path / "fresh", [*FAST, "trainer.max_steps=2", "logger=wandb"]))
    assert offline_run_ids(tmp_path / "fresh") != [run_id]  # a fresh run is a new wandb run


@pytest.mark.parametrize("val_fraction,split", [(0.1, "validation"), (0.95, "training")])
def test_corpus_too_short_for_one_block_names_the_corpus_before_the_trainer(tmp_path, val_fraction, split):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("To be, or not to be: that is the question.\n" * 12)  # 12 lines of 43 characters
    with pytest.raises(DataError) as e:
        build(make_cfg(tmp_path / "run", ["debug=fast", f"data.files=[{corpus}]", f"data.val_fraction={val_fraction}"]))
    message = str(e.value)
    assert message.startswith(f"the {split} split of {corpus} has "), message
    assert "fewer than one block of data.block_size+1=65; add text" in message and "lower data.block_size" in message
    assert ".bin" not in message and "cache" not in message  # the corpus, not its token cache
    assert not (tmp_path / "run" / "checkpoints").exists()
