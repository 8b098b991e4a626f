"""A crafted checkpoint whose unpickling would create a file: every entrypoint that loads a
checkpoint refuses it with one `error:` line, and the file never appears."""

import pickle
import subprocess
import sys

import pytest
import torch

from lmpretrain.distributed.consolidate import _MetadataUnpickler


class Payload:
    """Unpickled freely, this runs `open(marker, "w")`: the marker file appears."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def crafted_ckpt(path, marker):
    torch.save({"state_dict": {}, "hyper_parameters": {}, "evil": Payload(marker)}, path)
    return path


def crafted_sharded_folder(folder, marker):
    folder.mkdir()
    torch.save({"global_step": 1}, folder / "meta.pt")
    (folder / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    return folder


def test_the_payload_does_run_when_unpickled_freely(tmp_path):
    """The crafted file is a real attack: without weights_only its payload runs."""
    marker = tmp_path / "pwned"
    torch.load(crafted_ckpt(tmp_path / "evil.ckpt", marker), weights_only=False)
    assert marker.exists()


def run(args, tmp_path):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, check=False)


@pytest.mark.slow  # five CLI start-ups, ~15 s each
@pytest.mark.parametrize("entrypoint", ["train", "finetune", "generate", "evaluate", "consolidate"])
def test_every_entrypoint_refuses_a_crafted_checkpoint_and_runs_nothing(tmp_path, entrypoint):
    marker = tmp_path / "pwned"
    evil = crafted_ckpt(tmp_path / "evil.ckpt", marker)
    fast = ["debug=fast", "trainer.accelerator=cpu", "logger=csv", f"hydra.run.dir={tmp_path}/run"]
    args = {
        "train": ["lmpretrain.train", f"ckpt_path={evil}", *fast],
        "finetune": ["lmpretrain.finetune", "task=spam", f"pretrained={evil}", *fast],
        "generate": ["lmpretrain.generate", f"ckpt_path={evil}", f"hydra.run.dir={tmp_path}/run"],
        "evaluate": ["lmpretrain.evaluate", f"checkpoints=[{evil}]", f"hydra.run.dir={tmp_path}/run"],
        "consolidate": ["lmpretrain.distributed", "consolidate", str(crafted_sharded_folder(tmp_path / "sharded", marker))],
    }[entrypoint]
    r = run(args, tmp_path)
    assert not marker.exists(), f"{entrypoint} ran the payload"
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-3000:]


def test_metadata_allow_list_refuses_globals_outside_the_checkpoint_format():
    for module, name in (("os", "system"), ("builtins", "eval"), ("builtins", "open"), ("torch", "load"),
                         ("torch.distributed.checkpoint.filesystem", "os")):
        with pytest.raises(pickle.UnpicklingError):
            _MetadataUnpickler(__import__("io").BytesIO(b"")).find_class(module, name)
    assert _MetadataUnpickler(__import__("io").BytesIO(b"")).find_class("torch", "float32") is torch.float32
