"""How a run spreads over devices, as Trainer arguments: batch arithmetic, precision choice and
strategy checks.

`resolve_trainer_config(cfg)` turns the user's intent (a global batch size, `precision=auto`, a
strategy) into concrete Trainer arguments and rejects combinations that cannot work, before any
process is started.
"""

from __future__ import annotations

import logging

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from lmpretrain.errors import ConfigError

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


# Trainer settings that must be whole numbers (at least the given minimum) / numbers of either kind.
INTEGER_SETTINGS = {"max_steps": -1, "max_epochs": -1, "num_nodes": 1, "accumulate_grad_batches": 1,
                    "log_every_n_steps": 1, "num_sanity_val_steps": -1}
NUMBER_SETTINGS = ("gradient_clip_val", "val_check_interval", "limit_val_batches", "limit_train_batches")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_trainer_values(trainer: DictConfig, batch_size) -> None:
    """Types and ranges of the Trainer settings (a typo like trainer.max_steps=abc would otherwise
    fail deep inside Lightning), all problems listed at once."""
    problems = []
    for key, least in INTEGER_SETTINGS.items():
        value = trainer.get(key)
        if value is None:
            continue
        if not _is_int(value):
            problems.append(f"trainer.{key}={value!r} is not a whole number")
        elif value < least:
            problems.append(f"trainer.{key}={value} must be >= {least}")
    for key in NUMBER_SETTINGS:
        value = trainer.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"trainer.{key}={value!r} is not a number")
        elif value < 0:
            problems.append(f"trainer.{key}={value} must be >= 0")
    if not _is_int(batch_size) or batch_size < 1:
        problems.append(f"data.batch_size={batch_size!r} must be a whole number >= 1")
    devices = trainer.get("devices")
    if not (devices in ("auto", -1, "-1") or (_is_int(devices) and devices >= 1) or OmegaConf.is_list(devices)):
        problems.append(f"trainer.devices={devices!r} must be a number >= 1, a list of device ids, or auto")
    if problems:
        raise ConfigError("; ".join(problems) + "; fix these overrides")


def resolve_trainer_config(cfg: DictConfig) -> DictConfig:
    """A copy of `cfg.trainer` with precision and accumulation resolved and checked."""
    trainer = cfg.trainer.copy()
    check_trainer_values(trainer, cfg.data.get("batch_size"))
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


def resolve_unused_parameters(trainer: DictConfig, module) -> None:
    """DDP's `find_unused_parameters: auto`: on only when the objective can leave parameters without a
    gradient (MLM skips BERT's pooler, multitask runs one task per step); the search costs a graph walk
    per step, so objectives that use everything skip it."""
    strategy = trainer.strategy
    if not isinstance(strategy, str) and strategy.get("find_unused_parameters") == "auto":
        with open_dict(trainer):
            strategy.find_unused_parameters = not module.uses_every_parameter
