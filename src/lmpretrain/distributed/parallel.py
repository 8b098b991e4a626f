"""Sharded training: FSDP2 sharding and tensor parallelism as a Lightning strategy, and gradient
clipping across the meshes they leave parameters on.

`FSDP2Strategy` shards the network with `fully_shard` (FSDP2, parameters become DTensors) through
Lightning's `ModelParallelStrategy`, optionally after splitting each block's matrices over a
tensor-parallel group (Megatron-style, `tensor_parallel_plan`): unlike Lightning's `FSDPStrategy`
(FSDP1), it runs on CPU with gloo, so the same code path is tested here and used on GPUs.
`clip_grad_norm_` clips the gradients of such a network (2D FSDP x TP puts its parameters on two
different meshes, which torch's own clipping cannot combine).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from lmpretrain.errors import ConfigError

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


def clip_grad_norm_(parameters, max_norm: float) -> torch.Tensor:
    """`torch.nn.utils.clip_grad_norm_` for parameters that are DTensors on different meshes (2D
    FSDP x TP: split matrices live on both mesh dimensions, replicated norms and embeddings on the
    data-parallel one), which torch's version cannot stack into one norm. Norms are summed per mesh,
    each made global with one collective, then combined. Returns the total norm before clipping."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in parameters if p.grad is not None]
    by_mesh: dict = {}
    for g in grads:
        by_mesh.setdefault(g.device_mesh if isinstance(g, DTensor) else None, []).append(g)
    squares = []
    for group in by_mesh.values():
        norm = torch.nn.utils.get_total_norm(group, 2.0)
        squares.append((norm.full_tensor() if isinstance(norm, DTensor) else norm).float() ** 2)
    total = torch.stack(squares).sum().sqrt()
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.item() if isinstance(g, DTensor) else coef.to(g.dtype))
    return total


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
            return super().load_checkpoint(checkpoint_path, weights_only=True)
        metadata = _load_checkpoint(path, {"state_dict": self.model}, strict=self.lightning_module.strict_loading,
                                    weights_only=True)  # never unpickle: None would let an environment variable decide
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
        kwargs = {"mesh": dp_mesh, "reshard_after_forward": self.reshard_after_forward}
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
