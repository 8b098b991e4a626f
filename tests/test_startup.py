"""lmpretrain.startup: the command-line programs do no full garbage collection while they import,
and freeze what the imports created; anything else that imports lmpretrain keeps the collector as it is."""

import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmpretrain import startup
from lmpretrain.startup import is_program

REPO = Path(__file__).resolve().parents[1]

# Put first on PYTHONPATH as sitecustomize: counts the automatic full collections (the collector on)
# that ran before anything was frozen (while a program imports; freeze_imports' own gc.collect() runs
# with the collector still paused) and prints the count and the frozen objects at exit.
COUNTER = '''
import atexit, gc, sys
full = {"before_freeze": 0}
def count(phase, info):
    if phase == "stop" and info["generation"] == 2 and gc.get_freeze_count() == 0 and gc.isenabled():
        full["before_freeze"] += 1
gc.callbacks.append(count)
atexit.register(lambda: print("GC", full["before_freeze"], gc.get_freeze_count(), file=sys.stderr))
'''


@pytest.mark.parametrize(("orig_argv", "argv0", "expected"), [
    (["python", "-m", "lmpretrain.train", "trainer.max_steps=1"], "-m", True),
    (["python", "-X", "importtime", "-u", "-m", "lmpretrain.finetune", "task=spam"], "-m", True),
    (["/venv/bin/lmp-evaluate", "ckpt=a"], "/venv/bin/lmp-evaluate", True),
    (["python", "-m", "pytest", "-m", "lmpretrain.train"], "-m", False),
    (["python", "-m", "lmpretrain.generate"], "-m", False),  # not one of the long programs
    (["python", "-c", "from lmpretrain.train import main; main()", "-m", "lmpretrain.train"], "-c", False),
    (["python", "script.py", "-m", "lmpretrain.train"], "script.py", False),
    (["/venv/bin/jupyter-lab"], "/venv/bin/jupyter-lab", False),
])
def test_only_the_programs_pause_the_collector(orig_argv, argv0, expected):
    assert is_program(orig_argv, argv0) is expected


def test_pause_then_freeze_leaves_the_collector_on_and_the_imports_frozen(monkeypatch):
    import atexit

    monkeypatch.setattr(startup, "_state", {"paused": False, "frozen": False})
    monkeypatch.setattr(sys, "orig_argv", ["python", "-m", "lmpretrain.train"])
    monkeypatch.setenv("LMPRETRAIN_KEEP_FREED_MEMORY", "0")  # this test process keeps glibc's own settings
    try:
        startup.configure_if_program()
        assert not gc.isenabled()
        startup.freeze_imports()
        assert gc.isenabled() and gc.get_freeze_count() > 0
        frozen = gc.get_freeze_count()
        startup.freeze_imports()  # the next job of a multirun: nothing more is frozen
        assert gc.get_freeze_count() == frozen
    finally:
        atexit.unregister(startup._freeze_for_exit)
        gc.unfreeze()
        gc.enable()


def test_a_test_process_keeps_its_collector():
    startup.configure_if_program()  # pytest's own command line: not a program
    assert gc.isenabled()


def test_a_program_runs_no_full_collection_while_it_imports(tmp_path):
    """`python -m lmpretrain.train`: no automatic full collection before the freeze (6-7 of them, ~0.6 s,
    before the change), and what the imports created (over 100k objects) is frozen."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(COUNTER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "WANDB_MODE": "offline"}
    r = subprocess.run([sys.executable, "-m", "lmpretrain.train", "experiment=shakespeare_char", "trainer.max_steps=1",
                        "logger=csv", f"hydra.run.dir={tmp_path / 'run'}"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("GC ")]
    before_freeze, frozen = map(int, line.split()[1:])
    assert before_freeze == 0 and frozen > 100_000, line


# Training steps of nanoGPT's CPU model; prints the minor page faults per step over the last 20. The
# sys.orig_argv given decides whether configure_if_program() sees one of the programs.
STEPS = '''
import resource, sys, torch
sys.orig_argv = sys.argv[1:]
from lmpretrain import startup
startup.configure_if_program()
from lmpretrain.models import GPT, GPTConfig
torch.manual_seed(0)
model = GPT(GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128, bias=False))
opt = torch.optim.AdamW(model.parameters(), fused=True)
def step():
    x = torch.randint(0, 65, (12, 64))
    torch.nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten()).backward()
    opt.step()
    opt.zero_grad()
for _ in range(10):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
'''


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's allocator")
def test_a_program_reuses_freed_memory_instead_of_faulting_it_in_again():
    """glibc gives the freed top of its heap back to the OS past its dynamic trim threshold (2x the
    largest chunk lately freed), so each step faulted its activations in again: ~1,000 page faults
    per step of this model. In a program, keep_freed_memory() leaves them to the next step (a few
    faults per step are left: the heap still grows now and then)."""
    def faults(orig_argv):
        r = subprocess.run([sys.executable, "-c", STEPS, *orig_argv], capture_output=True, text=True, timeout=120,
                           check=True, env={k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")})
        return float(r.stdout.split()[-1])

    program, other = faults(["python", "-m", "lmpretrain.train"]), faults(["python", "-m", "pytest"])
    assert other > 200 and program < other / 10, (program, other)
