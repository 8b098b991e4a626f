"""`ckpt_path=last` finds the newest last.ckpt of the run's folder or of logs/<name>; a checkpoint that
cannot resume this model is refused before training with one message."""

import os

import pytest
import torch

from lmpretrain.checkpoints import check_resume_fits, resolve_ckpt_path
from lmpretrain.errors import ConfigError


def touch(path, mtime):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    os.utime(path, ns=(mtime, mtime))
    return path


def test_last_is_the_newest_last_ckpt_of_the_runs_of_that_name(tmp_path):
    runs = tmp_path / "logs" / "train"
    touch(runs / "2026-11-30" / "10-00-00" / "checkpoints" / "last.ckpt", 1_000)
    newest = touch(runs / "2026-11-30" / "09-00-00" / "checkpoints" / "last.ckpt", 3_000)  # by time written
    touch(runs / "multiruns" / "2026-11-29" / "08-00-00" / "0" / "checkpoints" / "last.ckpt", 2_000)
    touch(runs / "2026-11-30" / "11-00-00" / "checkpoints" / "step000010-val_loss1.0.ckpt", 9_000)  # not a last
    touch(tmp_path / "logs" / "other" / "x" / "checkpoints" / "last.ckpt", 9_000)  # another name
    this_run = runs / "2026-12-01" / "12-00-00"  # the new run's own folder, still empty
    assert resolve_ckpt_path("last", this_run, runs) == newest
    mine = touch(this_run / "checkpoints" / "last.ckpt", 4_000)  # a re-run into the same folder
    assert resolve_ckpt_path("last", this_run, runs) == mine


def test_last_with_no_checkpoint_is_one_error(tmp_path):
    with pytest.raises(ConfigError, match=r"ckpt_path=last: no last\.ckpt under .*run or .*logs/train; pass"):
        resolve_ckpt_path("last", tmp_path / "run", tmp_path / "logs" / "train")


def test_auto_is_the_newest_last_ckpt_or_none(tmp_path):
    runs = tmp_path / "logs" / "train"
    assert resolve_ckpt_path("auto", runs / "new", runs) is None  # a first start: train from scratch
    newest = touch(runs / "a" / "checkpoints" / "last.ckpt", 2_000)
    touch(runs / "b" / "checkpoints" / "last.ckpt", 1_000)
    assert resolve_ckpt_path("auto", runs / "new", runs) == newest


def test_a_path_is_returned_as_given(tmp_path):
    assert resolve_ckpt_path(str(tmp_path / "a.ckpt"), tmp_path, tmp_path) == tmp_path / "a.ckpt"


def test_resume_checkpoint_must_be_a_training_state_of_this_network():
    net = torch.nn.Linear(3, 2)
    state = {f"network.{k}": v for k, v in net.state_dict().items()}
    module = torch.nn.Module()
    module.network = net
    good = {"state_dict": state, "loops": {}, "optimizer_states": []}
    check_resume_fits(good, module, "a.ckpt")  # fits: no error
    with pytest.raises(ConfigError, match=r"a\.ckpt holds weights only.*pretrained=a\.ckpt"):
        check_resume_fits({"state_dict": state}, module, "a.ckpt")
    with pytest.raises(ConfigError, match="holds no training state"):
        check_resume_fits({"model": 1}, module, "a.ckpt")
    wider = {**good, "state_dict": {"network.weight": torch.zeros(4, 3), "network.extra": torch.zeros(1)}}
    with pytest.raises(ConfigError, match=r"does not fit this model: network\.bias is missing; network\.extra is "
                                          r"not in this model; network\.weight is \(4, 3\) there, \(2, 3\) here"):
        check_resume_fits(wider, module, "a.ckpt")
