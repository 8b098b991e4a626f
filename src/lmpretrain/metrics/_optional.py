"""Optional packages a metric needs: a missing one is a ConfigError naming what to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from lmpretrain.errors import ConfigError

EVAL_EXTRA = "pip install 'lmpretrain[eval]'"


def require(module: str, package: str, metric: str) -> ModuleType:
    """Import `module`, or raise a one-line ConfigError saying `metric` needs `package` (the eval extra)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"metric {metric!r} needs the package {package!r}, which is not installed: {EVAL_EXTRA}"
        ) from None
