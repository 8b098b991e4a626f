"""`python -m lmpretrain.distributed consolidate <ckpt folder>`: merge the per-rank shards of an
FSDP2Strategy checkpoint into one `.ckpt` file, in one process without a GPU."""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import torch

from lmpretrain.atomic import atomic_write
from lmpretrain.errors import ConfigError


class _MetadataUnpickler(pickle.Unpickler):
    """Reads torch.distributed.checkpoint's `.metadata` pickle without running what a crafted file
    asks for: only the checkpoint-format dataclasses and torch's dtype / layout / Size values load;
    any other global (os.system, builtins.eval, ...) is refused."""

    SAFE_BUILTINS = frozenset({("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"),
                               ("builtins", "slice"), ("torch", "Size"), ("pathlib", "PosixPath"),
                               ("torch.serialization", "_get_layout")})  # name -> one of torch's layouts

    def find_class(self, module: str, name: str):
        if (module, name) in self.SAFE_BUILTINS:
            return super().find_class(module, name)
        if module.startswith(("torch.distributed.checkpoint.", "torch.distributed._shard.")):
            found = super().find_class(module, name)
            if isinstance(found, type) and not issubclass(found, BaseException):  # dataclasses and enums only
                return found
        if module == "torch":
            found = super().find_class(module, name)
            if isinstance(found, (torch.dtype, torch.layout, torch.memory_format)):
                return found
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a checkpoint's .metadata")


def _safe_reader(folder: Path):
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            with open(Path(self.path) / ".metadata", "rb") as f:
                metadata = _MetadataUnpickler(f).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(folder)


def consolidate_checkpoint(folder: str | Path, output: str | Path | None = None) -> Path:
    """Merge a sharded checkpoint folder (FSDP2Strategy, one file per rank) into one `.ckpt` file that
    `Module.load_from_checkpoint`, `generate` and `evaluate` read. Runs in one process, no GPU needed.
    Nothing in the folder is unpickled freely: `.metadata` through an allow-list, `meta.pt` and the
    shards with `weights_only=True` (torch's default for both)."""
    from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    folder = Path(folder)
    if not (folder / "meta.pt").is_file():
        raise ConfigError(f"{folder} is not a sharded checkpoint folder (no meta.pt); it may already be one file")
    output = Path(output) if output else folder.with_name(folder.stem + ".consolidated.ckpt")
    checkpoint: dict = {}
    try:
        _safe_reader(folder).read_metadata()  # first on its own: torch's loader would log a traceback
        _load_state_dict(checkpoint, storage_reader=_safe_reader(folder), planner=_EmptyStateDictLoadPlanner(),
                         no_dist=True)  # full (unsharded) tensors, keys as in one process
        checkpoint.update(torch.load(folder / "meta.pt", map_location="cpu", weights_only=True))
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, AssertionError) as e:  # DCP asserts on a bad read
        why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ConfigError(f"{folder} is not a sharded checkpoint this project can read safely ({why})") from None
    atomic_write(output, lambda tmp: torch.save(checkpoint, tmp))
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lmpretrain.distributed")
    sub = parser.add_subparsers(dest="command", required=True)
    cons = sub.add_parser("consolidate", help="sharded checkpoint folder -> one .ckpt file")
    cons.add_argument("folder")
    cons.add_argument("--output", default=None, help="default: <folder stem>.consolidated.ckpt beside it")
    args = parser.parse_args(argv)
    print(consolidate_checkpoint(args.folder, args.output))
