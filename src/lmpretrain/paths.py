"""Where the repository, the shared data and the caches live.

The data root is `$LMPRETRAIN_DATA` when set, else `<repo>/../shared/data`, so tests and
benchmarks run the same from a checkout, CI, or a machine with its own data folder.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf


def repo_root() -> Path:
    """The checkout holding `pyproject.toml` (src layout: src/lmpretrain/paths.py -> ../..)."""
    here = Path(__file__).resolve().parents[2]
    if (here / "pyproject.toml").exists():
        return here
    return Path.cwd()


def data_root() -> Path:
    env = os.environ.get("LMPRETRAIN_DATA")
    return Path(env).expanduser() if env else repo_root().parent / "shared" / "data"


def cache_root() -> Path:
    env = os.environ.get("LMPRETRAIN_CACHE")
    return Path(env).expanduser() if env else repo_root() / ".cache"


def unwritable(folder: str | Path, create: bool = True) -> str | None:
    """Why `folder` cannot hold a run's files, or None when it can. `create`: make it if missing;
    otherwise (a folder only a save would create) its nearest existing parent is tried instead."""
    folder = Path(folder)
    if not create:
        while not folder.exists() and folder.parent != folder:
            folder = folder.parent
        if not folder.is_dir():  # a file where a parent folder should be
            return "Not a directory"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        return e.strerror or type(e).__name__
    return None


class RunDirCheck(Callback):
    """Hydra callback (conf/hydra/default.yaml): an unwritable run folder is one `error:` line and
    exit status 2 before the job starts, where Hydra itself would print a traceback."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        folder = config.hydra.run.dir
        if (why := unwritable(folder)) is not None:
            print(f"error: the run folder {folder} cannot be written ({why}); set hydra.run.dir= or "
                  f"paths.log_dir= to a writable folder", file=sys.stderr)
            sys.exit(2)


def register_resolvers() -> None:
    """`${repo_root:}`, `${data_root:}`, `${cache_root:}` for the Hydra configs."""
    for name, fn in (("repo_root", repo_root), ("data_root", data_root), ("cache_root", cache_root)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, lambda fn=fn: str(fn()))


register_resolvers()
