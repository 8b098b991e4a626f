"""The rest of issue 11's bad-input catalogue, each run as a user would (a subprocess of the CLI):
the 14 inputs the issue found already handled, plus a sharded checkpoint folder where a file is
expected and NaN from a huge learning rate. A bad input ends with exit status 2 and one `error:`
line, the whole of stderr (an unknown key is Hydra's own message and status 1, before our code runs).
Each case is one process start (~10 s here): three run by default, the rest with -m slow.
test_bad_inputs.py holds the resume/trainer/tokenizer cases."""

import os
import re
import subprocess
import sys

import pytest
import torch

FAST = ["debug=fast", "trainer.max_steps=2", "trainer.val_check_interval=2"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.txt").write_bytes(b"")
    (d / "binary.txt").write_bytes(b"hello\n\x00\x01\x02\xff\n")
    (d / "latin1.txt").write_bytes("caf\u00e9\n".encode("latin-1"))
    (d / "broken.jsonl").write_bytes(b'{"text": "a"}\n{"text": \n')
    (d / "nofield.jsonl").write_bytes(b'{"text": "a"}\n{"body": "b"}\n')
    (d / "tiny.txt").write_text("To be, or not to be: that is the question.\n" * 12)  # 44 validation tokens
    (d / "notes.txt").write_text("not a checkpoint\n")
    sharded = d / "sharded"  # the shape of an FSDP checkpoint folder (torch.distributed.checkpoint)
    sharded.mkdir()
    (sharded / ".metadata").write_bytes(b"\x80\x04N.")
    (sharded / "__0_0.distcp").write_bytes(b"")
    return d


def case(name, module, args, pattern, status=2, slow=True):
    return pytest.param(module, args, pattern, status, id=name, marks=[pytest.mark.slow] if slow else [])


TRAIN, FINETUNE, GENERATE, DISTRIBUTED = "lmpretrain.train", "lmpretrain.finetune", "lmpretrain.generate", \
    "lmpretrain.distributed"
EXPORT = "lmpretrain.export"
CASES = [  # {d}: the `inputs` folder
    case("missing_file", TRAIN, ["data.files=[{d}/missing.txt]"], r"error: corpus file \S+missing\.txt does not exist.*"),
    case("empty_file", TRAIN, ["data.files=[{d}/empty.txt]"], r"error: the corpus is empty \(\S+empty\.txt\); .*",
         slow=False),
    case("binary_file", TRAIN, ["data.files=[{d}/binary.txt]"], r"error: \S+binary\.txt:2: binary data .*"),
    case("non_utf8_file", TRAIN, ["data.files=[{d}/latin1.txt]"], r"error: \S+latin1\.txt:1: not UTF-8 \(byte 0xe9.*"),
    case("malformed_json_line", TRAIN, ["data.files=[{d}/broken.jsonl]"], r"error: \S+broken\.jsonl:2: invalid JSON.*"),
    case("missing_field", TRAIN, ["data.files=[{d}/nofield.jsonl]"], r"error: \S+nofield\.jsonl:2: no field 'text'.*"),
    case("tiny_corpus", TRAIN, ["data.files=[{d}/tiny.txt]"],
         r"error: the validation split of \S+tiny\.txt has 44 tokens, fewer than one block of "
         r"data\.block_size\+1=65; add text, raise data\.val_fraction, or lower data\.block_size", slow=False),
    case("glob_matching_nothing", TRAIN, ["data.files=[{d}/*.nothing]"], r"error: .*no file matches .*\*\.nothing.*"),
    case("unknown_key", TRAIN, ["model.n_layerz=3"], r"Could not override 'model\.n_layerz'\.\n.*Key 'n_layerz' is "
         r"not in struct\n.*Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace\.", status=1),
    case("indivisible_heads", TRAIN, ["model.n_head=5"], r"error: model\.n_embd=128 must be divisible by model\.n_head=5.*"),
    case("block_too_long", TRAIN, ["data.block_size=128"], r"error: data\.block_size=128 is longer than "
         r"model\.block_size=64.*"),
    case("indivisible_global_batch", TRAIN, ["global_batch_size=30", "data.batch_size=4"],
         r"error: global_batch_size=30 is not a multiple of data\.batch_size \(4\).*"),
    case("non_checkpoint_pretrained", FINETUNE, ["pretrained={d}/notes.txt"],
         r"error: pretrained=\S+notes\.txt is not a checkpoint this project can load safely .*"),
    case("missing_consolidation_folder", DISTRIBUTED, ["consolidate", "{d}/nope"], r"error: .*\S+/nope.*"),
    # new: a sharded checkpoint folder where a single file is expected, for each entrypoint that loads one
    case("sharded_folder_as_ckpt_path", TRAIN, ["ckpt_path={d}/sharded"],
         r"error: ckpt_path=\S+sharded is a folder \(a sharded checkpoint\?\); merge it first with "
         r"`python -m lmpretrain\.distributed consolidate \S+sharded`", slow=False),
    case("sharded_folder_as_pretrained", FINETUNE, ["pretrained={d}/sharded"],
         r"error: pretrained=\S+sharded is a folder \(a sharded checkpoint\?\); merge it first .*"),
    case("sharded_folder_to_generate", GENERATE, ["ckpt_path={d}/sharded"],
         r"error: ckpt_path=\S+sharded is a folder \(a sharded checkpoint\?\); merge it first .*"),
    # new: a required value (`???`) left unset: checked before any work by train/finetune, and caught
    # where it is first read by the other entrypoints
    case("unset_required_value", FINETUNE, ["task=spam_distill"],
         r"error: task\.teacher is required but unset \(`\?\?\?` in the config\); set it on the command line: "
         r"task\.teacher=\.\.\."),
    case("unset_required_value_export", EXPORT, [], r"error: ckpt_path is required but unset .*: ckpt_path=\.\.\."),
]


def run(module, args, tmp_path):
    if module != DISTRIBUTED:
        args = [*(FAST if module in (TRAIN, FINETUNE) else []), *args, f"hydra.run.dir={tmp_path}"]
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)


@pytest.mark.parametrize("module,args,pattern,status", CASES)
def test_bad_input_is_one_line_before_training(tmp_path, inputs, module, args, pattern, status):
    r = run(module, [a.format(d=inputs) for a in args], tmp_path)
    assert r.returncode == status, r.stderr[-3000:]
    assert "Traceback" not in r.stderr + r.stdout
    assert re.fullmatch(pattern, r.stderr.strip(), flags=re.S if status != 2 else 0), r.stderr[-3000:]
    assert not list(tmp_path.rglob("*.ckpt"))  # nothing trained, nothing written


@pytest.mark.slow
def test_huge_lr_ends_with_the_divergence_line_and_keeps_the_earlier_checkpoints(tmp_path):
    """optimizer.lr=1e6: the loss is NaN at step 2; the run stops there (status 2, the last stderr line
    says so and what to do, no traceback); the step-1 checkpoints are intact and finite. ~20 s."""
    r = run(TRAIN, ["optimizer.lr=1e6", "trainer.max_steps=30", "trainer.val_check_interval=1"], tmp_path)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    last_line = r.stderr.strip().splitlines()[-1]
    step = int(re.fullmatch(r"error: train/loss is (?:nan|inf) at step (\d+); lower optimizer\.lr or set "
                            r"trainer\.gradient_clip_val, then resume from the last good checkpoint "
                            r"\(ckpt_path=\.\.\.\)", last_line)[1])
    assert step < 30
    saved = sorted((tmp_path / "checkpoints").glob("*.ckpt"))
    assert [p.name for p in saved][0] == "last.ckpt" and len(saved) == 2
    steps = []
    for path in saved:
        ckpt = torch.load(path, weights_only=True)
        steps.append(ckpt["global_step"])
        assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())
    # "at step N" counts the updates done when the loss of the next batch was NaN: last.ckpt (saved at
    # every validation) may hold those N updates; the best is from before, and nothing is from after.
    assert max(steps) <= step and min(steps) == step - 1, (steps, step)


def test_an_unset_required_value_is_a_user_error_naming_the_key():
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    from lmpretrain.errors import ConfigError, find_user_error

    cfg = OmegaConf.create({"task": {"teacher": "???", "temperature": 2.0}, "ckpt_path": "???"})
    assert sorted(OmegaConf.missing_keys(cfg)) == ["ckpt_path", "task.teacher"]
    with pytest.raises(MissingMandatoryValue) as missing:
        _ = cfg.task.teacher
    try:  # wrapped, as Hydra's instantiate wraps what a constructor raises
        raise RuntimeError("while building the module") from missing.value
    except RuntimeError as wrapped:
        found = find_user_error(wrapped)
    assert isinstance(found, ConfigError)
    assert str(found) == ("task.teacher is required but unset (`???` in the config); set it on the command line: "
                          "task.teacher=...")
    assert find_user_error(RuntimeError("not a user error")) is None
