"""How a run spreads over devices: batch arithmetic, precision choice, FSDP2 sharding and tensor
parallelism.

- `trainer_config`: the user's intent (a global batch size, `precision=auto`, a strategy) as
  concrete, checked Trainer arguments, before any process is started.
- `parallel`: `FSDP2Strategy` (FSDP2 `fully_shard`, optionally x tensor parallelism, on GPUs and on
  CPU with gloo), its tensor-parallel plan, and gradient clipping over mixed meshes.
- `consolidate`: sharded checkpoint folder -> one `.ckpt` file
  (`python -m lmpretrain.distributed consolidate <folder>`).

The names below are re-exported: `lmpretrain.distributed.FSDP2Strategy` is the `_target_` of
conf/strategy/fsdp.yaml.
"""

from lmpretrain.distributed.consolidate import consolidate_checkpoint
from lmpretrain.distributed.parallel import FSDP2Strategy, clip_grad_norm_, tensor_parallel_plan
from lmpretrain.distributed.trainer_config import (
    PRECISIONS,
    accumulation_for,
    check_tensor_parallel,
    data_parallel_rank_and_size,
    resolve_precision,
    resolve_trainer_config,
    resolve_unused_parameters,
    strategy_name,
    tensor_parallel_size,
    uses_gpu,
    world_size,
)

__all__ = [
    "PRECISIONS", "FSDP2Strategy", "accumulation_for", "check_tensor_parallel", "clip_grad_norm_",
    "consolidate_checkpoint", "data_parallel_rank_and_size", "resolve_precision", "resolve_trainer_config",
    "resolve_unused_parameters", "strategy_name", "tensor_parallel_plan", "tensor_parallel_size", "uses_gpu",
    "world_size",
]
