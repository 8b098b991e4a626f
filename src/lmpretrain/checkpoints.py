"""Reading the checkpoints a user hands us: only with `weights_only=True` (tensors and plain
values; a file that would need arbitrary unpickling is refused), with one clear error for a file
that is missing, a folder, or not an lmpretrain checkpoint.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from lmpretrain.errors import ConfigError

# Checkpoints written before the module class was recorded: the objective that trains each network.
DEFAULT_MODULES = {
    "gpt": "lmpretrain.objectives.causal_lm.CausalLMModule",
    "bert": "lmpretrain.objectives.masked_lm.MaskedLMModule",
    "t5": "lmpretrain.objectives.span_corruption.SpanCorruptionModule",
}


def read_checkpoint(path: str | Path, key: str) -> dict:
    """The checkpoint dict at `path` (`key` names the setting in messages, e.g. `pretrained`)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"{key}={path}: no such checkpoint file") from None
    except (IsADirectoryError, PermissionError):
        raise ConfigError(f"{key}={path} is a folder (a sharded checkpoint?); merge it first with "
                          f"`python -m lmpretrain.distributed consolidate {path}`") from None
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a file that is not a checkpoint
        raise ConfigError(f"{key}={path} is not a checkpoint this project can load safely ({type(e).__name__}); "
                          f"pass a .ckpt written by lmpretrain") from None


def module_class(ckpt: dict, path: str | Path, key: str) -> type:
    """The LightningModule class that wrote `ckpt` (only classes of this project are accepted)."""
    name = ckpt.get("lmpretrain_module")
    if name is None:
        arch = ((ckpt.get("hyper_parameters") or {}).get("model") or {}).get("arch", "gpt")
        name = DEFAULT_MODULES.get(arch)
    if not name or not name.startswith("lmpretrain."):
        raise ConfigError(f"{key}={path} was not written by an lmpretrain module; pass a checkpoint from "
                          f"python -m lmpretrain.train or lmpretrain.finetune")
    module, _, cls = name.rpartition(".")
    return getattr(importlib.import_module(module), cls)


def load_module(path: str | Path, key: str = "ckpt_path"):
    """Rebuild the LightningModule of a single-file checkpoint, weights and tokenizer included."""
    ckpt = read_checkpoint(path, key)
    cls = module_class(ckpt, path, key)
    return cls.load_from_checkpoint(path, map_location="cpu", weights_only=True)
