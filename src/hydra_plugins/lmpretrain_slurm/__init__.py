"""A stand-in for hydra-submitit-launcher when the `slurm` extra is not installed.

conf/hydra/launcher/slurm.yaml builds on the plugin's `submitit_slurm` config. Without the plugin,
Hydra's config composition would fail with "Could not load 'hydra/launcher/submitit_slurm'", which
names no fix; this registers that config for a launcher that ends the command with one line saying
what to install (exit status 2). With the plugin installed this module does nothing.
"""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
    from hydra.core.config_store import ConfigStore
    from hydra.plugins.launcher import Launcher

    from lmpretrain.errors import exit_missing_extra

    class MissingSlurmLauncher(Launcher):
        def __init__(self, *args, **kwargs):
            exit_missing_extra("hydra/launcher=slurm", "the submitit launcher (hydra-submitit-launcher)", "slurm")

        def setup(self, *args, **kwargs) -> None:  # pragma: no cover - never constructed
            raise NotImplementedError

        def launch(self, *args, **kwargs):  # pragma: no cover
            raise NotImplementedError

    ConfigStore.instance().store(group="hydra/launcher", name="submitit_slurm", provider="lmpretrain",
                                 node={"_target_": f"{__name__}.MissingSlurmLauncher", "_recursive_": False})
