"""`python -m lmpretrain.distributed consolidate <ckpt folder>`: merge the per-rank shards of an
FSDP2Strategy checkpoint into one `.ckpt` file, in one process without a GPU."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from lmpretrain.atomic import atomic_write
from lmpretrain.errors import ConfigError


def consolidate_checkpoint(folder: str | Path, output: str | Path | None = None) -> Path:
    """Merge a sharded checkpoint folder (FSDP2Strategy, one file per rank) into one `.ckpt` file that
    `Module.load_from_checkpoint`, `generate` and `evaluate` read. Runs in one process, no GPU needed."""
    from lightning.fabric.utilities.load import _load_distributed_checkpoint

    folder = Path(folder)
    if not (folder / "meta.pt").is_file():
        raise ConfigError(f"{folder} is not a sharded checkpoint folder (no meta.pt); it may already be one file")
    output = Path(output) if output else folder.with_name(folder.stem + ".consolidated.ckpt")
    checkpoint = _load_distributed_checkpoint(folder)  # full (unsharded) tensors, keys as in one process
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
