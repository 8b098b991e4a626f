"""Sweeps: a -m grid logs one wandb run per job in one group; the Optuna search (TPE, SQLite) records
failed trials and goes on, and a second invocation continues the same study."""

import os
import subprocess
import sys

import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf
from optuna.trial import TrialState

from conftest import make_cfg
from lmpretrain.config import CONF_DIR


def sweep(tmp_path, *args, env=None):
    r = subprocess.run([sys.executable, "-m", "lmpretrain.train", "-m", "debug=fast", *args], capture_output=True,
                       text=True, timeout=600, cwd=tmp_path, env={**os.environ, **(env or {})})
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_slurm_launcher_asks_for_one_task_per_device_on_every_node(tmp_path):
    """hydra/launcher=slurm composes onto hydra-submitit-launcher's structured config (unknown keys
    would fail here) and takes the job's shape from the trainer: SLURM starts devices x nodes tasks,
    which Lightning joins through the SLURM_* variables."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "trainer.num_nodes=2", "trainer.devices=8",
                                          "strategy=fsdp", "hydra.launcher.partition=gpu"], return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (2, 8, 8)
    assert (launcher["partition"], launcher["max_num_timeout"], launcher["signal_delay_s"]) == ("gpu", 3, 120)
    assert type(instantiate(cfg.hydra.launcher)).__name__ == "SlurmLauncher"


def test_single_run_is_named_and_grouped_by_task(tmp_path):
    cfg = make_cfg(tmp_path, ["logger=wandb", "name=pretrain"])
    assert (cfg.logger.wandb.name, cfg.logger.wandb.group) == ("pretrain", "pretrain")


@pytest.mark.slow
def test_grid_sweep_one_wandb_run_per_job_in_one_group(tmp_path):
    sweep(tmp_path, "optimizer.lr=1e-3,3e-3", "model=gpt_tiny", "logger=[csv,wandb]",
          f"hydra.sweep.dir={tmp_path}/grid/stamp", env={"WANDB_MODE": "offline"})
    for job, lr in [(0, "0.001"), (1, "0.003")]:
        runs = list((tmp_path / "grid" / "stamp" / str(job) / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(runs) == 1, job  # its own run, not the previous job's
        record = runs[0].read_bytes()  # protobuf: the strings are stored verbatim
        assert f"train:optimizer.lr={lr},model=gpt_tiny".encode() in record
        assert b"train/grid_stamp" in record  # the sweep's group
        assert "val/loss" in (tmp_path / "grid" / "stamp" / str(job) / "csv" / "metrics.csv").read_text()


@pytest.mark.slow
def test_optuna_search_skips_failed_trials_and_resumes(tmp_path):
    storage = f"sqlite:///{tmp_path}/study.db"
    args = ["hparams_search=optuna", f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=s",
            "hydra.sweeper.sampler.seed=6", "model.n_head=choice(4,5)"]  # n_head=5 cannot split 128 dims
    sweep(tmp_path, *args, "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={tmp_path}/a")
    study = optuna.load_study(study_name="s", storage=storage)
    first = study.get_trials()
    assert len(first) == 3
    assert {t.params["model.n_head"] for t in first} == {4, 5}  # seed 6 tries 5, 4, 4
    for t in first:  # the invalid config fails, is recorded, and the search went on
        assert t.state == (TrialState.FAIL if t.params["model.n_head"] == 5 else TrialState.COMPLETE), t.params
    for t in study.get_trials(states=[TrialState.COMPLETE]):
        assert 3.0 < t.value < 4.5 and set(t.params) >= {"optimizer.lr", "optimizer.weight_decay"}

    study.ask()  # a trial a killed sweep left RUNNING
    sweep(tmp_path, *args, "hydra.sweeper.n_trials=4", f"hydra.sweep.dir={tmp_path}/b")
    trials = optuna.load_study(study_name="s", storage=storage).get_trials()
    assert len(trials) == 5  # 3 earlier + the interrupted one + exactly 1 new: n_trials is the study's total
    assert trials[3].state == TrialState.FAIL and trials[3].user_attrs["interrupted"]
    assert trials[4].state in (TrialState.COMPLETE, TrialState.FAIL) and trials[4].number == 4
    assert len(list((tmp_path / "b").glob("*/train.log"))) == 1


def test_hydra_plugin_scan_leaves_optuna_to_sweeps():
    """Hydra imports every module under hydra_plugins on each run; ours must not import optuna there
    (2-4 s of every start-up here, sweep or not)."""
    code = ("import sys; from hydra.core.plugins import Plugins; Plugins.instance(); "
            "import hydra_plugins.lmpretrain_optuna; print(sorted(m for m in sys.modules if m.startswith('optuna')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"


@pytest.mark.parametrize(("override", "blocked", "line"), [
    ("hparams_search=optuna", ["hydra_plugins.hydra_optuna_sweeper", "optuna"],
     ("error: hparams_search=optuna needs the Optuna sweeper (hydra-optuna-sweeper), which is not installed: "
      "pip install 'lmpretrain[optuna]'")),
    ("hydra/launcher=slurm", ["hydra_plugins.hydra_submitit_launcher", "submitit"],
     ("error: hydra/launcher=slurm needs the submitit launcher (hydra-submitit-launcher), which is not installed: "
      "pip install 'lmpretrain[slurm]'")),
])
def test_a_sweep_whose_extra_is_missing_names_the_install(tmp_path, override, blocked, line):
    """The Optuna sweeper and the SLURM launcher are extras: with their packages missing (blocked
    here), the command ends with one line naming the install and exit status 2, not Hydra's "Could
    not load 'hydra/sweeper/optuna'" (no fix named) or a failed import of the preset's optuna sampler."""
    code = (f"import sys; sys.modules.update(dict.fromkeys({blocked!r})); "
            f"sys.argv = ['lmp-train', '-m', {override!r}, 'debug=fast']; "
            "from lmpretrain.train import main; main()")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines() == [line]
    assert not list(tmp_path.rglob("*.ckpt"))  # no job ran
