"""Reading and writing checkpoints.

Reading the checkpoints a user hands us: only with `weights_only=True` (tensors and plain values; a
file that would need arbitrary unpickling is refused), with one clear error for a file that is
missing, a folder, or not an lmpretrain checkpoint.

Writing: `AtomicCheckpointIO`, the Trainer's CheckpointIO plugin, writes every checkpoint through
`lmpretrain.atomic` (temp file in the checkpoint folder, fsync, rename), so a kill -9 or a full disk
during a save leaves the previous `last.ckpt` / best checkpoint loadable.
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lmpretrain.atomic import atomic_torch_save
from lmpretrain.errors import ConfigError

# Checkpoints written before the module class was recorded: the objective that trains each network.
DEFAULT_MODULES = {
    "gpt": "lmpretrain.objectives.causal_lm.CausalLMModule",
    "bert": "lmpretrain.objectives.masked_lm.MaskedLMModule",
    "t5": "lmpretrain.objectives.span_corruption.SpanCorruptionModule",
}


def read_checkpoint(path: str | Path, key: str, mmap: bool = False) -> dict:
    """The checkpoint dict at `path` (`key` names the setting in messages, e.g. `pretrained`);
    `mmap`: tensors stay on disk until touched (a cheap check of a big file)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise ConfigError(f"{key}={path}: no such checkpoint file") from None
    except (IsADirectoryError, PermissionError):
        raise ConfigError(f"{key}={path} is a folder (a sharded checkpoint?); merge it first with "
                          f"`python -m lmpretrain.distributed consolidate {path}`") from None
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a file that is not a checkpoint
        raise ConfigError(f"{key}={path} is not a checkpoint this project can load safely ({type(e).__name__}); "
                          f"pass a .ckpt written by lmpretrain") from None


def resolve_ckpt_path(value: str | Path, output_dir: Path, run_root: Path) -> Path | None:
    """`ckpt_path=last`: the newest last.ckpt under this run's folder or under logs/<name> (the folder
    of every earlier run of that name); `auto`: the same, or None (start fresh) when there is none,
    for a job that a scheduler requeues with the same command; any other value is a path."""
    if str(value) not in ("last", "auto"):
        return Path(value).expanduser()
    found = [p for root in (output_dir, run_root) if root.is_dir() for p in root.rglob("last.ckpt")]
    if not found and str(value) == "auto":
        return None
    if not found:
        raise ConfigError(f"ckpt_path=last: no last.ckpt under {output_dir} or {run_root}; pass the checkpoint "
                          f"file, ckpt_path=.../checkpoints/last.ckpt, or keep the run's name=")
    return max(found, key=lambda p: p.stat().st_mtime_ns)


def check_resume_fits(ckpt: dict, module: torch.nn.Module, path: str | Path) -> None:
    """A checkpoint to resume from must be a training checkpoint of this very network: every weight
    present with the same shape (else Lightning fails after setup with a size-mismatch wall)."""
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ConfigError(f"ckpt_path={path} holds no training state (no state_dict); pass a .ckpt written by "
                          f"lmpretrain.train, or start from its weights with pretrained=")
    if "loops" not in ckpt or "optimizer_states" not in ckpt:
        raise ConfigError(f"ckpt_path={path} holds weights only, not a resumable training state; start from "
                          f"it with pretrained={path} instead")
    theirs, ours = ckpt["state_dict"], module.state_dict()
    problems = [f"{k} is missing" for k in ours if k not in theirs]
    problems += [f"{k} is not in this model" for k in theirs if k not in ours]
    problems += [f"{k} is {tuple(theirs[k].shape)} there, {tuple(v.shape)} here" for k, v in ours.items()
                 if k in theirs and tuple(theirs[k].shape) != tuple(v.shape)]
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ConfigError(f"ckpt_path={path} does not fit this model: {'; '.join(problems[:3])}{more}; resume "
                          f"with the model settings it was trained with (its run's .hydra/config.yaml)")


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


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's TorchCheckpointIO with crash-proof local saves and `weights_only=True` loads.

    Lightning's own save writes the bytes with fsspec's transaction, whose temp file lives in $TMPDIR;
    moving it onto another filesystem copies over the old checkpoint, so a kill during the copy
    truncates it. Remote paths (`s3://...`) keep Lightning's behaviour.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():  # an earlier sharded (FSDP) run in this folder saved `last.ckpt` as a folder
            if not ((path / "meta.pt").is_file() and (path / ".metadata").is_file()):
                raise ConfigError(f"cannot save {path}: a folder of that name is in the way and it is not a "
                                  f"sharded checkpoint this project wrote; move it or set hydra.run.dir=")
            shutil.rmtree(path)  # ours (written by the sharded save), replaced by this run's file
        # Streamed into the temp file; a failing torch.save leaves the folder as it was (temp file removed).
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location=lambda storage, loc: storage, weights_only: bool | None = None) -> dict:
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)
