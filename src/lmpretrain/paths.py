"""Where the repository, the shared data and the caches live.

The data root is `$LMPRETRAIN_DATA` when set, else `<repo>/../shared/data`, so tests and
benchmarks run the same from a checkout, CI, or a machine with its own data folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf


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


def register_resolvers() -> None:
    """`${repo_root:}`, `${data_root:}`, `${cache_root:}` for the Hydra configs."""
    for name, fn in (("repo_root", repo_root), ("data_root", data_root), ("cache_root", cache_root)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, lambda fn=fn: str(fn()))


register_resolvers()
