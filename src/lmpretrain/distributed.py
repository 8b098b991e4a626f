"""How a run spreads over devices: batch arithmetic, precision choice, FSDP2 sharding and tensor
parallelism.

`resolve_trainer_config(cfg)` turns the user's intent (a global batch size, `precision=auto`, a
strategy) into concrete Trainer arguments and rejects combinations that cannot work, before any
process is started. `FSDP2Strategy` shards the network with `fully_shard` (FSDP2, parameters become
DTensors) through Lightning's `ModelParallelStrategy`, optionally after splitting each block's
matrices over a tensor-parallel group (Megatron-style, `TENSOR_PARALLEL_PLAN`): unlike Lightning's
`FSDPStrategy` (FSDP1), it runs on CPU with gloo, so the same code path is tested here and used on GPUs.
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


def data_parallel_rank_and_size(trainer) -> tuple[int, int]:
    """(rank, size) among the processes that read different batches: the strategy's own split (the
    processes of one tensor-parallel group count once), global rank/world otherwise, (0, 1) alone."""
    if trainer is None:
        return 0, 1
    kwargs = getattr(trainer.strategy, "distributed_sampler_kwargs", None)
    if kwargs:
        return int(kwargs["rank"]), int(kwargs["num_replicas"])
    return trainer.global_rank, trainer.world_size


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


def tensor_parallel_size(strategy) -> int:
    if strategy_name(strategy) != "FSDP2Strategy":
        return 1
    return int(strategy.get("tensor_parallel", 1) or 1)


def check_tensor_parallel(tp: int, world: int, model) -> None:
    """Tensor parallelism splits heads and MLP columns over `tp` processes: all must divide evenly."""
    if tp == 1:
        return
    problems = []
    if tp < 1 or world % tp:
        problems.append(f"trainer.strategy.tensor_parallel={tp} must divide the {world} processes (devices x nodes)")
    hidden = model.get("mlp_ratio", 4) * model.n_embd
    for key, value in (("model.n_head", model.n_head), ("model.n_embd * model.mlp_ratio", hidden)):
        if value % tp:
            problems.append(f"{key}={value} is not divisible by trainer.strategy.tensor_parallel={tp}")
    if problems:
        raise ConfigError("; ".join(problems) + "; change trainer.strategy.tensor_parallel")


def resolve_trainer_config(cfg: DictConfig) -> DictConfig:
    """A copy of `cfg.trainer` with precision and accumulation resolved and checked."""
    trainer = cfg.trainer.copy()
    world = world_size(trainer.devices, trainer.num_nodes, trainer.accelerator)
    tp = tensor_parallel_size(trainer.strategy)
    check_tensor_parallel(tp, world, cfg.model)
    with open_dict(trainer):
        trainer.precision = resolve_precision(trainer.get("precision", "auto"), trainer.accelerator)
        # Ranks of one tensor-parallel group read the same batch: only world / tp batches differ.
        trainer.accumulate_grad_batches = accumulation_for(
            cfg.get("global_batch_size"), int(cfg.data.batch_size), world // tp, int(trainer.accumulate_grad_batches)
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


FSDP_FORWARD_METHODS = ("features", "pool", "decode")


def tensor_parallel_plan(network: nn.Module) -> dict:
    """Megatron-style plan for every attention and MLP in `network`: q, k, v and the MLP's first
    matrix split by output columns (each rank holds whole heads), the output projections by input
    rows, so one all-reduce per sublayer restores the full activation. Embeddings, norms and the LM
    head stay replicated (they are a small share of the FLOPs at the sizes where TP pays off)."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    from lmpretrain.models.blocks import MLP, Attention

    plan = {}
    for name, module in network.named_modules():
        if isinstance(module, Attention):
            plan.update({f"{name}.{p}": ColwiseParallel() for p in ("q", "k", "v")})
            plan[f"{name}.proj"] = RowwiseParallel()
        elif isinstance(module, MLP):
            plan[f"{name}.fc"], plan[f"{name}.proj"] = ColwiseParallel(), RowwiseParallel()
    return plan


def resolve_unused_parameters(trainer: DictConfig, module) -> None:
    """DDP's `find_unused_parameters: auto`: on only when the objective can leave parameters without a
    gradient (MLM skips BERT's pooler, multitask runs one task per step); the search costs a graph walk
    per step, so objectives that use everything skip it."""
    strategy = trainer.strategy
    if not isinstance(strategy, str) and strategy.get("find_unused_parameters") == "auto":
        with open_dict(trainer):
            strategy.find_unused_parameters = not module.uses_every_parameter


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 (`fully_shard`) over the data-parallel processes, full or hybrid, optionally combined
    with tensor parallelism (2D: `tensor_parallel` processes split each layer, the rest shard data).

    sharding: `full` shards every parameter over all data-parallel processes (ZeRO-3); `hybrid`
        shards within groups of `shard_size` processes and replicates across groups (HSDP:
        intra-node sharding, inter-node data parallel).
    shard_size: hybrid only, data-parallel processes per shard group.
    tensor_parallel: processes that split each block's matrices (`tensor_parallel_plan`); they read
        the same batch. 1 = pure FSDP. Use a divisor of the GPUs per node (TP needs the fast links).
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
        tensor_parallel: int = 1,
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
        if int(tensor_parallel) < 1:
            raise ConfigError(f"trainer.strategy.tensor_parallel={tensor_parallel} must be >= 1")
        super().__init__(
            data_parallel_size="auto", tensor_parallel_size=int(tensor_parallel),
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend, timeout=timedelta(minutes=timeout_minutes),
        )
        self.sharding, self.shard_size, self.tensor_parallel = sharding, shard_size, int(tensor_parallel)
        self.wrap, self.reshard_after_forward = tuple(wrap), reshard_after_forward

    def setup_environment(self) -> None:
        # ModelParallelStrategy's "auto" means data parallel across nodes and tensor parallel within
        # one; here every process not used for tensor parallelism is a data-parallel rank.
        world = self.num_nodes * self.num_processes
        if world % self.tensor_parallel:
            raise ConfigError(f"trainer.strategy.tensor_parallel={self.tensor_parallel} must divide the {world} processes")
        self._data_parallel_size = world // self.tensor_parallel
        super().setup_environment()

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict:
        """Lightning's loading, except that optimizer state is matched non-strictly: parameters an
        objective never updates (BERT's pooler during MLM, the pretraining heads during fine-tuning)
        have no AdamW state in the checkpoint, and torch's strict check would refuse to resume."""
        from lightning.fabric.strategies.model_parallel import (
            _distributed_checkpoint_load,
            _is_sharded_checkpoint,
            _load_checkpoint,
        )
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
            set_optimizer_state_dict,
        )

        path = Path(self.broadcast(checkpoint_path))
        if not _is_sharded_checkpoint(path):
            return super().load_checkpoint(checkpoint_path, weights_only=weights_only)
        metadata = _load_checkpoint(path, {"state_dict": self.model}, strict=self.lightning_module.strict_loading,
                                    weights_only=weights_only)
        for idx, optimizer in enumerate(self.optimizers):
            key = f"optimizer_{idx}"
            state = {key: get_optimizer_state_dict(self.model, optimizer)}
            _distributed_checkpoint_load(state, path)
            set_optimizer_state_dict(self.model, optimizer, optim_state_dict=state[key],
                                     options=StateDictOptions(cpu_offload=True, strict=False))
        return metadata

    def _meshes(self):
        """(data-parallel mesh for fully_shard, tensor-parallel mesh or None), from one parent mesh
        so FSDP and TP compose (2D); hybrid splits the data-parallel dimension in (replicate, shard)."""
        from torch.distributed.device_mesh import init_device_mesh

        dp, tp = self.device_mesh["data_parallel"].size(), self.tensor_parallel
        if self.sharding != "hybrid":
            return self.device_mesh["data_parallel"], (self.device_mesh["tensor_parallel"] if tp > 1 else None)
        if dp % self.shard_size:
            raise ConfigError(
                f"trainer.strategy.shard_size={self.shard_size} must divide the {dp} data-parallel processes"
            )
        # Same rank order as Lightning's (data_parallel, tensor_parallel) mesh, with the data-parallel
        # dimension split, so the data shards (by data-parallel rank) still match.
        mesh = init_device_mesh(
            self.root_device.type, (dp // self.shard_size, self.shard_size, tp),
            mesh_dim_names=("replicate", "shard", "tensor_parallel"),
        )
        return mesh["replicate", "shard"], (mesh["tensor_parallel"] if tp > 1 else None)

    def shard(self, network: nn.Module) -> None:
        """Tensor-parallelize the blocks (if asked), then `fully_shard` each `wrap` submodule and the
        network itself (the root unit) over the data-parallel processes."""
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
        from torch.distributed.tensor.parallel import parallelize_module

        dp_mesh, tp_mesh = self._meshes()
        if tp_mesh is not None:
            parallelize_module(network, tp_mesh, tensor_parallel_plan(network))
        kwargs = dict(mesh=dp_mesh, reshard_after_forward=self.reshard_after_forward)
        for module in network.modules():
            if type(module).__name__ in self.wrap:
                fully_shard(module, **kwargs)
        # The root unit (embeddings, final norm, heads) stays gathered after forward: backward needs
        # it at once, and objectives call its heads after `features` returns (FSDP2's own default).
        fully_shard(network, mesh=dp_mesh, reshard_after_forward=False)
        # Objectives call these instead of forward (hidden states for a fused loss, MLM heads,
        # pooling); registered, they gather the root unit's parameters as forward does.
        for method in FSDP_FORWARD_METHODS:
            if hasattr(network, method):
                register_fsdp_forward_method(network, method)


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
