"""Exact learning rates at chosen steps for every schedule (lr=1 so the numbers read as factors)."""

import math

import pytest
import torch

from lmpretrain.errors import ConfigError
from lmpretrain.optim import build_scheduler
from lmpretrain.optim.schedules import SCHEDULES

CASES = {
    # name: (kwargs, {step: expected lr})
    "cosine": (dict(warmup_steps=4, max_steps=14, min_lr=0.1),
               {0: 0.2, 3: 0.8, 4: 1.0, 9: 0.55, 14: 0.1, 20: 0.1}),
    "cosine_restarts": (dict(warmup_steps=2, period=4, period_mult=2.0, restart_decay=0.5, min_lr=0.0),
                        {0: 1 / 3, 2: 1.0, 4: 0.5, 5: 0.5 * (1 + math.cos(math.pi * 3 / 4)),
                         6: 0.5, 10: 0.25, 14: 0.25, 18: 0.25 * 0.5 * (1 + math.cos(math.pi / 4))}),
    "cyclic": (dict(mode="triangular", half_cycle=4, max_steps=100, min_lr=0.2),
               {0: 0.2, 2: 0.6, 4: 1.0, 6: 0.6, 8: 0.2, 12: 1.0}),
    "linear": (dict(warmup_steps=4, max_steps=14, min_lr=0.0),
               {0: 0.2, 1: 0.4, 4: 1.0, 9: 0.5, 14: 0.0, 30: 0.0}),
    "inverse_sqrt": (dict(warmup_steps=4), {0: 0.2, 4: 1.0, 16: 0.5, 64: 0.25}),
    "wsd": (dict(warmup_steps=2, max_steps=16, decay_fraction=0.25, min_lr=0.0),
            {0: 1 / 3, 2: 1.0, 11: 1.0, 12: 1.0, 14: 0.5, 15: 0.25, 16: 0.0, 40: 0.0}),
    "constant": (dict(warmup_steps=3), {0: 0.25, 2: 0.75, 3: 1.0, 100: 1.0}),
}
EXTRA = [  # the other modes of the same schedules
    ("cyclic", dict(mode="one_cycle", pct_start=0.2, div_factor=10.0, max_steps=20, min_lr=0.01),
     {0: 0.1, 2: 0.55, 4: 1.0, 12: 0.505, 20: 0.01}),
    ("wsd", dict(warmup_steps=2, max_steps=16, decay_fraction=0.25, decay_shape="cosine", min_lr=0.1),
     {12: 1.0, 14: 0.55, 16: 0.1}),
    ("wsd", dict(warmup_steps=2, max_steps=16, decay_fraction=0.25, decay_shape="sqrt", min_lr=0.0),
     {12: 1.0, 13: 0.5, 14: 1 - math.sqrt(0.5), 16: 0.0}),
]
ALL = [(name, *case) for name, case in CASES.items()] + EXTRA


def test_every_schedule_has_a_case():
    assert set(CASES) == set(SCHEDULES)


@pytest.mark.parametrize("name,kwargs,expected", ALL)
def test_schedule_values(name, kwargs, expected):
    for step, lr in expected.items():
        assert SCHEDULES[name](step, lr=1.0, **kwargs) == pytest.approx(lr, abs=1e-12), (name, step)


@pytest.mark.parametrize("name,kwargs,expected", ALL)
def test_scheduler_steps_per_optimizer_step_in_every_param_group(name, kwargs, expected):
    """LambdaLR scales every group's lr by schedule(step) / base lr; step() is one optimizer step."""
    w = torch.nn.Parameter(torch.zeros(2, 2))
    b = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([{"params": [w]}, {"params": [b], "weight_decay": 0.0}], lr=3e-4)
    base = 3e-4  # min_lr is an absolute lr: scale it with the base lr so `expected` stays a factor
    scheduler = build_scheduler(optimizer, name, **{k: v * base if k == "min_lr" else v for k, v in kwargs.items()})
    seen = {}
    for step in range(max(expected) + 1):
        seen[step] = [g["lr"] for g in optimizer.param_groups]
        optimizer.step()
        scheduler.step()
    for step, lr in expected.items():
        assert seen[step] == pytest.approx([base * lr] * 2, rel=1e-9, abs=1e-15), (name, step)


@pytest.mark.parametrize(
    "name,kwargs,message",
    [
        ("cosine_fancy", {}, "scheduler.name='cosine_fancy' is unknown"),
        ("cosine", dict(warmup_steps=-1, max_steps=10, min_lr=0.0), "scheduler.warmup_steps must be >= 0"),
        ("cosine_restarts", dict(warmup_steps=0, period=0), "scheduler.period must be >= 1"),
        ("cyclic", dict(mode="exp_range", max_steps=10, min_lr=0.0), "scheduler.mode='exp_range' must be"),
        ("wsd", dict(warmup_steps=0, max_steps=10, decay_shape="exp"), "scheduler.decay_shape='exp'"),
    ],
)
def test_bad_schedule_config_names_the_key(name, kwargs, message):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ConfigError, match=message):
        build_scheduler(optimizer, name, **kwargs)
