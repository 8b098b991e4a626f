"""How a run spreads over devices: batch arithmetic, precision choice, and FSDP2 sharding.

`resolve_trainer_config(cfg)` turns the user's intent (a global batch size, `precision=auto`, a
strategy) into concrete Trainer arguments and rejects combinations that cannot work, before any
process is started. `FSDP2Strategy` shards the network with `fully_shard` (FSDP2, parameters become
DTensors) through Lightning's `ModelParallelStrategy`: unlike Lightning's `FSDPStrategy` (FSDP1),
it runs on CPU with gloo, so the same code path is tested here and used on GPUs.
"""

from __future__ import annotations

import argparse
import logging
from datetime import timedelta
from pathlib import Path

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from lmpretrain.errors import ConfigError, exit_on_user_error

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true")


def uses_gpu(accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def world_size(devices, num_nodes: int, accelerator: str) -> int:
    """Processes the Trainer will start: devices per node x nodes (`auto`/-1: every GPU, or 1 CPU)."""
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        per_node = len(devices)
    elif devices in ("auto", -1, "-1"):
        per_node = torch.cuda.device_count() if uses_gpu(accelerator) else 1
    else:
        per_node = int(devices)
    return per_node * int(num_nodes)


def accumulation_for(global_batch_size: int | None, micro_batch_size: int, world: int, accumulate: int) -> int:
    """Micro-batches per optimizer step so that micro x world x accumulation = global batch size.

    The global batch stays fixed when devices change; `None` keeps `trainer.accumulate_grad_batches`.
    """
    if global_batch_size is None:
        return accumulate
    per_step = micro_batch_size * world
    if global_batch_size <= 0 or global_batch_size % per_step:
        raise ConfigError(
            f"global_batch_size={global_batch_size} is not a multiple of data.batch_size ({micro_batch_size}) x "
            f"devices x nodes ({world}) = {per_step}; choose a global_batch_size divisible by {per_step} or "
            f"change data.batch_size / trainer.devices"
        )
    needed = global_batch_size // per_step
    if accumulate not in (1, needed):
        raise ConfigError(
            f"trainer.accumulate_grad_batches={accumulate} contradicts global_batch_size={global_batch_size} "
            f"(which needs {needed}); set only one of them"
        )
    return needed


def resolve_precision(precision: str, accelerator: str) -> str:
    """`auto`: bf16-mixed on a GPU that supports bf16, else 32-true (bf16 is 10-50x slower than fp32
    on CPUs without AVX-512/AMX, and fp16 autocast does not exist on CPU)."""
    precision = str(precision)
    if precision not in PRECISIONS:
        raise ConfigError(f"precision={precision!r} is unknown; use one of {list(PRECISIONS)}")
    gpu = uses_gpu(accelerator)
    bf16_ok = gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if precision == "auto":
        return "bf16-mixed" if bf16_ok else "32-true"
    if precision == "16-mixed" and not gpu:
        raise ConfigError("precision=16-mixed (fp16 with loss scaling) needs a GPU; on CPU use precision=32-true")
    if precision.startswith("bf16") and gpu and not bf16_ok:
        raise ConfigError(f"precision={precision}: this GPU has no bf16 support; use precision=16-mixed")
    if precision.startswith("bf16") and not gpu:
        log.warning("precision=%s on CPU: expect it to be much slower than 32-true without AVX-512/AMX", precision)
    return precision


def strategy_name(strategy) -> str:
    if isinstance(strategy, str):
        return strategy
    return str(strategy.get("_target_", "")).rsplit(".", 1)[-1]


def resolve_trainer_config(cfg: DictConfig) -> DictConfig:
    """A copy of `cfg.trainer` with precision and accumulation resolved and checked."""
    trainer = cfg.trainer.copy()
    world = world_size(trainer.devices, trainer.num_nodes, trainer.accelerator)
    with open_dict(trainer):
        trainer.precision = resolve_precision(trainer.get("precision", "auto"), trainer.accelerator)
        trainer.accumulate_grad_batches = accumulation_for(
            cfg.get("global_batch_size"), int(cfg.data.batch_size), world, int(trainer.accumulate_grad_batches)
        )
    name = strategy_name(trainer.strategy)
    if name == "FSDP2Strategy" and world < 2:
        raise ConfigError(
            "strategy=fsdp shards over processes but trainer.devices x trainer.num_nodes = 1; set trainer.devices>=2 "
            "(CPU: processes with gloo), launch with torchrun/SLURM, or use strategy=auto"
        )
    if name == "FSDP2Strategy" and not torch.distributed.is_available():
        raise ConfigError("strategy=fsdp needs torch.distributed, which this torch build lacks; use strategy=auto")
    return trainer


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 (`fully_shard`) over all processes, optionally hybrid (replicate x shard).

    sharding: `full` shards every parameter over all processes (ZeRO-3); `hybrid` shards within
        groups of `shard_size` processes and replicates across groups (HSDP: intra-node sharding,
        inter-node data parallel).
    wrap: class names of the submodules that become their own FSDP unit (their parameters are
        all-gathered just before they run and freed after); the network itself is always the root
        unit. `[Block]` (default) is one unit per Transformer layer; `[]` gathers the whole model at once.
    reshard_after_forward: free gathered parameters after forward (less memory, one more all-gather
        in backward).
    """

    def __init__(
        self,
        sharding: str = "full",
        shard_size: int | None = None,
        wrap: list[str] = ("Block",),
        reshard_after_forward: bool = True,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        timeout_minutes: float = 30,
    ):
        if sharding not in ("full", "hybrid"):
            raise ConfigError(f"trainer.strategy.sharding={sharding!r} must be full or hybrid")
        if sharding == "hybrid" and not shard_size:
            raise ConfigError("trainer.strategy.sharding=hybrid needs trainer.strategy.shard_size (e.g. GPUs per node)")
        super().__init__(
            data_parallel_size="auto", tensor_parallel_size=1, save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend, timeout=timedelta(minutes=timeout_minutes),
        )
        self.sharding, self.shard_size = sharding, shard_size
        self.wrap, self.reshard_after_forward = tuple(wrap), reshard_after_forward

    def setup_environment(self) -> None:
        # ModelParallelStrategy's "auto" means data parallel across nodes and tensor parallel within
        # one; FSDP is pure data parallel: every process is one data-parallel rank.
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def shard(self, network: nn.Module) -> None:
        """Apply `fully_shard` to each `wrap` submodule, then to the network (the root unit)."""
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        if self.sharding == "hybrid":
            world = mesh.size()
            if world % self.shard_size:
                raise ConfigError(
                    f"trainer.strategy.shard_size={self.shard_size} must divide the {world} processes"
                )
            mesh = init_device_mesh(
                self.root_device.type, (world // self.shard_size, self.shard_size), mesh_dim_names=("replicate", "shard")
            )
        kwargs = dict(mesh=mesh, reshard_after_forward=self.reshard_after_forward)
        for module in network.modules():
            if type(module).__name__ in self.wrap:
                fully_shard(module, **kwargs)
        fully_shard(network, **kwargs)


def consolidate_checkpoint(folder: str | Path, output: str | Path | None = None) -> Path:
    """Merge a sharded checkpoint folder (FSDP2Strategy, one file per rank) into one `.ckpt` file that
    `Module.load_from_checkpoint`, `generate` and `evaluate` read. Runs in one process, no GPU needed."""
    from lightning.fabric.utilities.load import _load_distributed_checkpoint

    folder = Path(folder)
    if not (folder / "meta.pt").is_file():
        raise ConfigError(f"{folder} is not a sharded checkpoint folder (no meta.pt); it may already be one file")
    output = Path(output) if output else folder.with_name(folder.stem + ".consolidated.ckpt")
    checkpoint = _load_distributed_checkpoint(folder)  # full (unsharded) tensors, keys as in one process
    torch.save(checkpoint, output)
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lmpretrain.distributed")
    sub = parser.add_subparsers(dest="command", required=True)
    cons = sub.add_parser("consolidate", help="sharded checkpoint folder -> one .ckpt file")
    cons.add_argument("folder")
    cons.add_argument("--output", default=None, help="default: <folder stem>.consolidated.ckpt beside it")
    args = parser.parse_args(argv)
    print(consolidate_checkpoint(args.folder, args.output))


if __name__ == "__main__":
    exit_on_user_error(main)()
