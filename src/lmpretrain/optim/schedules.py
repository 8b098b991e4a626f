"""Learning-rate schedules as pure functions of the optimizer step.

Each `<schedule>(step, ...)` returns the learning rate to use at optimizer step `step` (0-based).
`build_scheduler` wraps one in a `LambdaLR`, which Lightning steps once per optimizer step
(`interval: step`), so gradient accumulation never changes the curve.
"""

from __future__ import annotations

import functools
import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from lmpretrain.errors import ConfigError


def cosine_with_warmup(step: int, *, lr: float, warmup_steps: int, max_steps: int, min_lr: float) -> float:
    """Linear warmup to `lr`, then half a cosine down to `min_lr` at `max_steps` (nanoGPT's get_lr)."""
    if step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    if step >= max_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def constant(step: int, *, lr: float, warmup_steps: int = 0, **_) -> float:
    return lr * (step + 1) / (warmup_steps + 1) if step < warmup_steps else lr


SCHEDULES = {"cosine": cosine_with_warmup, "constant": constant}


def build_scheduler(optimizer: Optimizer, name: str = "cosine", **kwargs) -> LambdaLR:
    """LambdaLR whose factor is schedule(step) / base lr, per parameter group."""
    if name not in SCHEDULES:
        raise ConfigError(f"scheduler.name={name!r} is unknown; use one of {sorted(SCHEDULES)}")
    base_lr = optimizer.defaults["lr"]
    schedule = functools.partial(SCHEDULES[name], lr=base_lr, **kwargs)
    return LambdaLR(optimizer, lambda step: schedule(step) / base_lr)
