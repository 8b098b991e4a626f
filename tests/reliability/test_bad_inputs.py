"""Bad-input catalogue: each case run as a user would (`python -m lmpretrain.train ...`) ends with exit
status 2 and one `error:` line on stderr naming the problem, found before the Trainer starts (no
step trained, no checkpoint written). Each case costs one process start (~10 s here); the first
six run by default, the rest with -m slow."""

import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import make_cfg
from lmpretrain.train import train

FAST = ["debug=fast", "trainer.max_steps=2", "trainer.val_check_interval=2"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A real checkpoint, a truncated and a random-bytes copy, a bad tokenizer.json, a plain file."""
    root = tmp_path_factory.mktemp("inputs")
    train(make_cfg(root / "run", FAST))
    good = root / "run" / "checkpoints" / "last.ckpt"
    data = good.read_bytes()
    (root / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (root / "random.ckpt").write_bytes(os.urandom(4096))
    (root / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": ')
    (root / "a_file").write_text("not a folder")
    return {"good": good, "root": root}


def case(name, overrides, pattern, slow=False):
    return pytest.param(overrides, pattern, id=name, marks=[pytest.mark.slow] if slow else [])


CASES = [  # {root} and {good} are filled from `files`
    case("lr_and_max_steps", ["optimizer.lr=-1e-3", "trainer.max_steps=abc"],  # both problems in one message
         r"error: trainer\.max_steps='abc' is not a whole number; .*optimizer\.lr=-0\.001 must be positive.*"),
    case("truncated_ckpt", ["ckpt_path={root}/truncated.ckpt"],
         r"error: ckpt_path=\S+truncated\.ckpt is not a checkpoint this project can load safely .*"),
    case("other_architecture", ["ckpt_path={good}", "model.n_layer=2"],
         r"error: ckpt_path=\S+last\.ckpt does not fit this model: network\.blocks\.2\.\S+ is not in this model.*"),
    case("unwritable_run_folder", ["hydra.run.dir={root}/a_file/run"],
         r"error: the run folder \S+a_file/run cannot be written \(Not a directory\); set hydra\.run\.dir=.*"),
    case("bad_tokenizer_json", ["tokenizer.path={root}/tokenizer.json"],
         r"error: tokenizer\.path=\S+tokenizer\.json is not a tokenizer\.json the tokenizers library can read .*"),
    case("max_steps_abc", ["trainer.max_steps=abc"],
         r"error: trainer\.max_steps='abc' is not a whole number; fix these overrides"),
    case("negative_lr", ["optimizer.lr=-1e-3"],
         r"error: optimizer\.lr=-0\.001 must be positive, e\.g\. optimizer\.lr=1e-3", slow=True),
    case("missing_ckpt", ["ckpt_path={root}/missing.ckpt"],
         r"error: ckpt_path=\S+missing\.ckpt: no such checkpoint file", slow=True),
    case("random_bytes_ckpt", ["ckpt_path={root}/random.ckpt"],
         r"error: ckpt_path=\S+random\.ckpt is not a checkpoint this project can load safely .*", slow=True),
    case("no_last_ckpt", ["ckpt_path=last", "name=never_ran"],
         r"error: ckpt_path=last: no last\.ckpt under .*never_ran; .*", slow=True),
    case("unwritable_checkpoint_folder", ["callbacks.model_checkpoint.dirpath={root}/a_file/ckpts"],
         r"error: checkpoint folder \S+a_file/ckpts cannot be written \(Not a directory\); .*", slow=True),
    case("negative_clip_zero_batch", ["trainer.gradient_clip_val=-1", "data.batch_size=0"],
         r"error: trainer\.gradient_clip_val=-1 must be >= 0; data\.batch_size=0 must be a whole number >= 1.*",
         slow=True),
]


@pytest.mark.parametrize("overrides,pattern", CASES)
def test_bad_input_is_one_error_line_and_exit_2(tmp_path, files, overrides, pattern):
    args = [o.format(root=files["root"], good=files["good"]) for o in overrides]
    if not any(a.startswith("hydra.run.dir=") for a in args):
        args.append(f"hydra.run.dir={tmp_path}")
    r = subprocess.run([sys.executable, "-m", "lmpretrain.train", *FAST, *args], capture_output=True, text=True,
                       timeout=300, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2, r.stderr[-3000:]
    assert re.fullmatch(pattern, r.stderr.strip()), r.stderr[-3000:]  # that one line and nothing else
    assert not list(tmp_path.rglob("*.ckpt"))  # stopped before the Trainer wrote anything
    assert torch.load(files["good"], weights_only=True)["global_step"] == 2  # a resume input is never modified


def test_checks_draw_nothing_from_the_seeded_rng():
    """The up-front checks run after seed_everything: drawing a random number there (e.g. building
    an nn.Linear) would change the model's initialisation, and every run's losses with it."""
    from lmpretrain.optim import check_optimizer_config

    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    check_optimizer_config({"name": "adamw", "lr": 1e-3, "weight_decay": 0.1, "betas": [0.9, 0.95]})
    assert torch.equal(torch.rand(3), expected)
