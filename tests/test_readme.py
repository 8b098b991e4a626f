"""Every command the README (and bench/RESULTS.md, its measurement log) shows is run by a test, so
the README cannot drift from the code.

`python -m lmpretrain.<entry>` commands are run here, in order, shortened (`debug=fast`, short
suites) with the placeholders (`<...>/last.ckpt`, `logs/train/<date>/<time>`) replaced by what the
earlier commands wrote. Commands that another test already runs, and the few that need a GPU or a
cluster, are listed in `ELSEWHERE` with the test that runs them (or why none can here); a README
command in neither list fails `test_every_readme_command_is_run_by_a_test`.
"""

from __future__ import annotations

import re
import shlex
import time
from pathlib import Path

import pytest

from conftest import SHAKESPEARE, make_cfg
from lmpretrain.paths import repo_root

README = repo_root() / "README.md"
DOCS = (README, repo_root() / "bench" / "RESULTS.md")  # in this order: RESULTS' commands use the README's runs
ENTRIES = ("train", "finetune", "evaluate", "generate", "inspect", "plot")

# Commands that other tests run (pattern -> "tests/file.py::test" that runs it) or that cannot
# run on a CPU-only machine without a cluster (pattern -> "why").
ELSEWHERE = {
    r"^python3 -m venv .* && python -m lmpretrain\.train$": ".ci/run (install) + test_readme.py (python -m lmpretrain.train debug=fast)",
    r"^python3 -m venv .* && pytest -m 'slow or not slow' -n auto --dist loadfile$": ".ci/run",
    r"^python -m lmpretrain\.train -m ": "tests/test_sweeps.py::test_grid_sweep_one_wandb_run_per_job_in_one_group",
    r"^-m hparams_search=optuna$": "tests/test_sweeps.py::test_optuna_search_skips_failed_trials_and_resumes",
    r"^python -m lmpretrain\.prepare": ("tests/test_prepare.py::test_default_config_prepares_shakespeare_into_valid_shards; "
                                    "prepare=shared_mix: bench/prepare_speed.py"),
    r"^torchrun ": "tests/distributed/test_multiprocess.py::test_two_nodes_started_by_torchrun_match_one_process",
    r"^python -m lmpretrain\.distributed consolidate": ("tests/distributed/test_multiprocess.py::"
                                                     "test_sharded_run_matches_one_process_and_its_checkpoint_resumes_and_consolidates"),
    r"^python -m lmpretrain\.train experiment=gpt2_124m": "GPU only (bf16, compiled GPT-2 124M): composed by test_readme.py::test_readme_commands_compose",
    r"^python bench/throughput\.py --device cuda": "GPU only",
    r"^python bench/soak\.py": "tests/reliability/test_soak.py",
    r"^python bench/downstream\.py": "tests/test_downstream_bench.py",
    r"^python bench/": "a benchmark: its figures are recorded in the README tables",
    r"^python -m lmpretrain\.export": "tests/export/test_entrypoint.py",
    r"^wandb sync": "needs the network",
    r"^lmp-": "tests/test_console.py::test_console_scripts_are_installed",
    r"^pytest": ".ci/run",
    r"^python -m lmpretrain\.<name>$": "not a command: the pattern the console scripts follow",
    r"^python -m lmpretrain\.train \.\.\.$": "not a command: 'any train command'",
}


def readme_commands() -> list[str]:
    """Shell commands of the README and RESULTS.md: lines of fenced blocks, and inline code that starts
    like one."""
    text = "\n".join(doc.read_text() for doc in DOCS)
    commands = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.DOTALL):
        for line in block.splitlines():
            line = re.split(r"\s{2,}#", line)[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    inline = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    for span in re.findall(r"`([^`]+)`", inline):
        span = " ".join(span.split())
        if span.startswith(("python ", "python3 ", "lmp-", "torchrun ", "pytest", "wandb sync", "-m hparams")):
            commands.append(span)
    return list(dict.fromkeys(commands))


def elsewhere(command: str) -> str | None:
    return next((why for pattern, why in ELSEWHERE.items() if re.search(pattern, command)), None)


def runnable(command: str) -> tuple[str, list[str]] | None:
    m = re.match(r"^python -m lmpretrain\.(\w+)(?:\s|$)", command)
    if not m or m.group(1) not in ENTRIES or elsewhere(command):
        return None
    return m.group(1), shlex.split(command)[3:]


def test_every_readme_command_is_run_by_a_test():
    commands = readme_commands()
    assert len(commands) > 15
    orphans = [c for c in commands if runnable(c) is None and elsewhere(c) is None]
    assert not orphans, f"README commands no test runs (add them to tests/test_readme.py): {orphans}"
    for why in {elsewhere(c) for c in commands} - {None}:
        for ref in re.findall(r"(tests/[\w/]+\.py)(?:::(\w+))?", why):
            path, name = ref
            assert (repo_root() / path).is_file(), why
            assert not name or f"def {name}(" in (repo_root() / path).read_text(), why


class Runs:
    """What earlier commands wrote, for the placeholders of later ones."""

    def __init__(self, root: Path):
        self.root = root
        self.gpt: Path | None = None   # a causal-LM run folder
        self.bert: Path | None = None  # a masked-LM run folder
        self.count = 0

    def ckpt(self, run: Path | None) -> str:
        assert run is not None, "a README command needs a checkpoint that no earlier command wrote"
        return str(run / "checkpoints" / "last.ckpt")

    def spam_teacher(self) -> str:
        """A spam classifier from scratch (the student's tokenizer: trained on the same split)."""
        out = self.root / "spam_teacher"
        if not out.exists():
            from lmpretrain.finetune import finetune

            finetune(make_cfg(out, ["task=spam", *SHORT], config_name="finetune"))
        return str(out / "checkpoints" / "last.ckpt")

    def books(self) -> str:
        folder = self.root / "books"
        if not folder.exists():
            folder.mkdir()
            text = SHAKESPEARE.read_text()
            for i in range(2):
                (folder / f"book{i}.txt").write_text(text[i * 100_000:(i + 1) * 100_000])
        return str(folder / "*.txt")


SHORT = ["debug=fast", "trainer.accelerator=cpu"]
# Overrides that make a command long, replaced when it runs here.
LONG = ("trainer.max_steps=", "callbacks.evaluation.every_n_steps=")
SHORT_SUITE = ["suite.intrinsic.shakespeare.max_batches=2", "suite.intrinsic.debian.max_batches=2",
               "suite.tasks.spam=['task=spam','debug=fast']"]


def shorten(entry: str, args: list[str], runs: Runs) -> list[str]:
    out = []
    for arg in args:
        key, _, value = arg.partition("=")
        if arg.startswith(LONG):
            if key == "callbacks.evaluation.every_n_steps":
                out += [f"{key}=2", *SHORT_SUITE]
            continue
        if key == "objective.teacher":
            arg = f"{key}={runs.ckpt(runs.gpt)}"
        elif key.lstrip("+") == "task.teacher":
            arg = f"{key}={runs.spam_teacher()}"
        elif key == "pretrained":  # train: continue the GPT; finetune: start from the encoder
            arg = f"pretrained={runs.ckpt(runs.gpt if entry == 'train' else runs.bert)}"
        elif key in ("ckpt_path", "ckpt") and ("<" in value or "..." in value):
            arg = f"{key}={runs.ckpt(runs.gpt)}"
        elif key == "checkpoints":
            arg = f"checkpoints=[{runs.ckpt(runs.gpt)},{runs.ckpt(runs.bert)},scratch]"
        elif key == "data.files" and "/data/books" in value:
            arg = f"data.files=[{runs.books()}]"
        out.append(arg)
    if entry in ("train", "finetune"):
        out += SHORT
    if entry in ("generate", "inspect") and not any(a.startswith(("ckpt_path=", "ckpt=")) for a in out):
        out.append(f"{'ckpt' if entry == 'inspect' else 'ckpt_path'}={runs.ckpt(runs.gpt)}")
    if entry == "train" and any(a.startswith("ckpt_path=") for a in out):
        out.append("trainer.max_steps=6")  # resume the 4-step run for 2 more steps
    if entry == "evaluate":
        out += SHORT_SUITE
    return out


def smaller_debian(cfg) -> None:
    """Debian's training file (6 MB gzipped) -> its validation file (0.5 MB) where a command reads it
    as a corpus (a list of files): the same format and fields, a tenth of the tokenizing. A task's
    train/val/test files stay (its labels come from the training split)."""
    from omegaconf import DictConfig, ListConfig

    def walk(node) -> None:
        items = node.items() if isinstance(node, DictConfig) else enumerate(node)
        for key, value in list(items):
            if isinstance(value, (DictConfig, ListConfig)):
                walk(value)
            elif value == "debian_packages.train.jsonl.gz" and isinstance(node, ListConfig):
                node[key] = "debian_packages.validation.jsonl.gz"  # a corpus; a task's {train: ...} stays

    walk(cfg)


def run_command(entry: str, args: list[str], runs: Runs) -> None:
    runs.count += 1
    out = runs.root / f"{runs.count:02d}_{entry}"
    if entry == "plot":
        from lmpretrain import plot

        dirs = [str(runs.gpt), str(runs.bert or runs.gpt)]
        assert plot.main([*dirs, "--out", str(out / "runs.png")]) == 0
        assert (out / "runs.png").is_file()
        return
    cfg = make_cfg(out, shorten(entry, args, runs), config_name=entry)
    smaller_debian(cfg)
    if entry == "train":
        from lmpretrain.train import train

        metrics = train(cfg)
        assert metrics.get("train/loss") is not None
        if cfg.objective._target_.endswith("CausalLMModule") and runs.gpt is None:
            runs.gpt = out
        elif cfg.objective._target_.endswith("MaskedLMModule") and runs.bert is None:
            runs.bert = out
    elif entry == "finetune":
        from lmpretrain.finetune import finetune

        assert finetune(cfg).get("test/loss") is not None
    elif entry == "evaluate":
        from lmpretrain.evaluate import evaluate

        results = evaluate(cfg)
        assert "scratch" in results and (out / "report.md").is_file()
    elif entry == "generate":
        from lmpretrain.generate import generate_text

        (text,) = generate_text(cfg.ckpt_path, cfg.prompt, 20, cfg.temperature, cfg.top_k)
        assert text.startswith(cfg.prompt)
    elif entry == "inspect":
        from lmpretrain.inspect import inspect_checkpoint

        assert inspect_checkpoint(cfg)["attention"]


def test_readme_commands_compose(tmp_path):
    """Every `python -m lmpretrain.*` command of the README names existing groups, options and keys."""
    runs = Runs(tmp_path)
    runs.gpt = runs.bert = tmp_path / "run"
    for command in readme_commands():
        m = re.match(r"^python -m lmpretrain\.(train|finetune|evaluate|generate|inspect)(?:\s|$)", command)
        if m and " -m " not in command[m.end():] and runnable(command):
            make_cfg(tmp_path, shorten(m.group(1), shlex.split(command)[3:], runs), config_name=m.group(1))


@pytest.mark.slow
def test_readme_commands_run(tmp_path):
    runs = Runs(tmp_path)
    commands = [(c, r) for c in readme_commands() if (r := runnable(c))]
    assert len(commands) >= 12
    # Checkpoints first: the tour's first GPT run and the encoder, for every placeholder after them.
    def first(entry_args) -> bool:
        entry, args = entry_args
        return (entry == "train" and any(a.startswith("experiment=") for a in args)
                and not any(a.startswith(("pretrained=", "ckpt_path=")) for a in args))

    commands.sort(key=lambda cr: not first(cr[1]))
    for command, (entry, args) in commands:
        start = time.perf_counter()
        try:
            run_command(entry, args, runs)
        except Exception as e:  # name the README line that failed
            raise AssertionError(f"README command failed: {command}") from e
        print(f"{time.perf_counter() - start:6.1f} s  {command}")
