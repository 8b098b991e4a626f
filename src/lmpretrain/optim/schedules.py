"""Learning-rate schedules as pure functions of the optimizer step.

Each `<schedule>(step, ...)` returns the learning rate to use at optimizer step `step` (0-based).
`build_scheduler` wraps one in a `LambdaLR`, which Lightning steps once per optimizer step
(`interval: step`), so gradient accumulation never changes the curve.

All schedules share one warmup: `lr * (step + 1) / (warmup_steps + 1)` for `step < warmup_steps`
(nanoGPT's), so step 0 never trains at lr 0.
"""

from __future__ import annotations

import functools
import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from lmpretrain.errors import ConfigError


def warmup(step: int, lr: float, warmup_steps: int) -> float:
    return lr * (step + 1) / (warmup_steps + 1)


def cosine_with_warmup(step: int, *, lr: float, warmup_steps: int, max_steps: int, min_lr: float) -> float:
    """Linear warmup to `lr`, then half a cosine down to `min_lr` at `max_steps` (nanoGPT's get_lr)."""
    if step < warmup_steps:
        return warmup(step, lr, warmup_steps)
    if step >= max_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def cosine_with_restarts(
    step: int, *, lr: float, warmup_steps: int, period: int, period_mult: float = 1.0, min_lr: float = 0.0,
    restart_decay: float = 1.0, **_,
) -> float:
    """SGDR (Loshchilov & Hutter 2017): after warmup, cosine cycles from the peak to `min_lr`.

    Cycle i lasts `period * period_mult**i` steps and peaks at `lr * restart_decay**i`.
    """
    if step < warmup_steps:
        return warmup(step, lr, warmup_steps)
    t, length, cycle = step - warmup_steps, float(period), 0
    while t >= length:  # at most log(steps) iterations for period_mult > 1
        t, length, cycle = t - length, length * period_mult, cycle + 1
    peak = lr * restart_decay**cycle
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * t / length)) * (peak - min_lr)


def cyclic(
    step: int, *, lr: float, max_steps: int, min_lr: float, mode: str = "triangular", half_cycle: int = 100,
    pct_start: float = 0.3, div_factor: float = 25.0, **_,
) -> float:
    """`triangular` (Smith 2017): min_lr -> lr -> min_lr, linearly, every `2 * half_cycle` steps.

    `one_cycle` (Smith & Topin 2018, torch's OneCycleLR with cosine annealing): cosine up from
    `lr / div_factor` to `lr` over the first `pct_start` of `max_steps`, then cosine down to `min_lr`.
    """
    if mode == "triangular":
        x = abs(step / half_cycle % 2 - 1)  # 1 at the cycle's ends, 0 at its middle
        return min_lr + (lr - min_lr) * (1 - x)
    up = max(1, round(pct_start * max_steps))
    start = lr / div_factor
    if step < up:
        return lr + 0.5 * (1 + math.cos(math.pi * step / up)) * (start - lr)
    progress = min(1.0, (step - up) / max(1, max_steps - up))
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (lr - min_lr)


def linear(step: int, *, lr: float, warmup_steps: int, max_steps: int, min_lr: float = 0.0, **_) -> float:
    """Linear warmup, then a straight line from `lr` to `min_lr` at `max_steps` (BERT's schedule)."""
    if step < warmup_steps:
        return warmup(step, lr, warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return lr + progress * (min_lr - lr)


def inverse_sqrt(step: int, *, lr: float, warmup_steps: int, **_) -> float:
    """Linear warmup, then `lr * sqrt(warmup_steps / step)` ("Attention Is All You Need", T5)."""
    if step < warmup_steps:
        return warmup(step, lr, warmup_steps)
    return lr * math.sqrt(max(warmup_steps, 1) / max(step, 1))


def warmup_stable_decay(
    step: int, *, lr: float, warmup_steps: int, max_steps: int, min_lr: float = 0.0, decay_fraction: float = 0.2,
    decay_shape: str = "linear", **_,
) -> float:
    """WSD (MiniCPM, Hu et al. 2024): warmup, hold `lr`, then decay to `min_lr` over the last
    `decay_fraction` of `max_steps` (`linear`, `cosine`, or `sqrt`: lr scaled by 1 - sqrt(progress))."""
    if step < warmup_steps:
        return warmup(step, lr, warmup_steps)
    decay_start = max_steps - round(decay_fraction * max_steps)
    if step < decay_start:
        return lr
    progress = min(1.0, (step - decay_start) / max(1, max_steps - decay_start))
    shape = {
        "linear": 1 - progress,
        "cosine": 0.5 * (1 + math.cos(math.pi * progress)),
        "sqrt": 1 - math.sqrt(progress),
    }[decay_shape]
    return min_lr + (lr - min_lr) * shape


def constant(step: int, *, lr: float, warmup_steps: int = 0, **_) -> float:
    return warmup(step, lr, warmup_steps) if step < warmup_steps else lr


SCHEDULES = {
    "cosine": cosine_with_warmup,
    "cosine_restarts": cosine_with_restarts,
    "cyclic": cyclic,
    "linear": linear,
    "inverse_sqrt": inverse_sqrt,
    "wsd": warmup_stable_decay,
    "constant": constant,
}


def check_schedule(name: str, kwargs: dict) -> None:
    """Reject values that would give a wrong curve silently, naming the `scheduler.` key."""
    if name not in SCHEDULES:
        raise ConfigError(f"scheduler.name={name!r} is unknown; use one of {sorted(SCHEDULES)}")
    problems = []
    if kwargs.get("warmup_steps", 0) < 0:
        problems.append("scheduler.warmup_steps must be >= 0")
    if name == "cosine_restarts" and (kwargs.get("period", 0) < 1 or kwargs.get("period_mult", 1.0) < 1.0):
        problems.append("scheduler.period must be >= 1 and scheduler.period_mult >= 1")
    if name == "cyclic" and kwargs.get("mode", "triangular") not in ("triangular", "one_cycle"):
        problems.append(f"scheduler.mode={kwargs['mode']!r} must be triangular or one_cycle")
    if name == "wsd" and kwargs.get("decay_shape", "linear") not in ("linear", "cosine", "sqrt"):
        problems.append(f"scheduler.decay_shape={kwargs['decay_shape']!r} must be linear, cosine or sqrt")
    if problems:
        raise ConfigError("; ".join(problems))


def build_scheduler(optimizer: Optimizer, name: str = "cosine", **kwargs) -> LambdaLR:
    """LambdaLR whose factor is schedule(step) / base lr, per parameter group; a group with
    `frozen_steps` (optimizer.head_only_steps) has factor 0 before that step."""
    check_schedule(name, kwargs)
    base_lr = optimizer.defaults["lr"]
    schedule = functools.partial(SCHEDULES[name], lr=base_lr, **kwargs)

    def factor(frozen: int):
        # a plain function, not a partial: LambdaLR's state_dict stores a callable object's attributes
        return lambda step: 0.0 if step < frozen else schedule(step) / base_lr

    return LambdaLR(optimizer, [factor(g.get("frozen_steps", 0)) for g in optimizer.param_groups])
