"""Optimizers over weight-decay parameter groups, optionally with a learning rate per layer.

Decay applies to the weight matrices of Linear layers only: biases, norm gains and embeddings
(token and position) are left undecayed, as in BERT/GPT-2 training recipes. A tied LM head shares
its tensor with the token embedding, so it counts as an embedding.

`layer_decay` < 1 is layer-wise learning-rate decay (discriminative fine-tuning: ULMFiT, Howard &
Ruder 2018; ELECTRA and BEiT's fine-tuning recipes): the heads and whatever sits above the last
block train at `lr`, block i of L at `lr * layer_decay ** (L - i)`, the embeddings at
`lr * layer_decay ** (L + 1)`. A freshly initialised task head then moves fast while the pretrained
lower layers, which hold the most general features, move least.

`head_only_steps` > 0 trains only the top (depth 0: the heads) for that many steps and the rest
from then on (linear probing, then fine-tuning: LP-FT, Kumar et al. 2022; ULMFiT's gradual
unfreezing in one stage): a random head's first gradients then do not reach the pretrained layers.
Each group carries `frozen_steps`, which `build_scheduler` honours.
"""

from __future__ import annotations

import torch
from torch import nn

from lmpretrain.errors import ConfigError

NO_DECAY_MODULES = (nn.Embedding, nn.LayerNorm, nn.RMSNorm)


# Parameter-name prefixes of the input side of a network with one stack of `blocks` (GPT, Encoder):
# they sit below block 0 in the layer-wise decay.
EMBEDDING_PREFIXES = ("tok_emb.", "pos_emb.", "seg_emb.", "emb_norm.")


def layer_depths(model: nn.Module) -> dict[int, int]:
    """id(parameter) -> its depth from the top for `layer_decay`: 0 for the heads, the final norm and
    any other parameter outside the stack; L - i for block i of L; L + 1 for the embeddings."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ConfigError(f"optimizer.layer_decay needs a network with one stack of blocks (GPT, BERT); "
                          f"{type(model).__name__} has none; set optimizer.layer_decay=1.0")
    n = len(blocks)
    depths: dict[int, int] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if name.startswith(EMBEDDING_PREFIXES):
            depth = n + 1
        elif name.startswith("blocks."):
            depth = n - int(name.split(".")[1])
        else:
            depth = 0
        # a tied tensor (LM head = token embedding) takes the deepest of its names: it is the embedding
        depths[id(p)] = max(depth, depths.get(id(p), 0))
    return depths


def weight_decay_groups(model: nn.Module, weight_decay: float, lr: float | None = None,
                        layer_decay: float = 1.0, head_only_steps: int = 0) -> list[dict]:
    """The decay and no-decay groups; with `layer_decay` < 1 or `head_only_steps` > 0 (and `lr`),
    one such pair per depth of `layer_depths`, each with its own `lr` (the scheduler scales every
    group's rate by one factor) and `frozen_steps` (0 for the heads)."""
    no_decay: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if isinstance(module, NO_DECAY_MODULES) or name.endswith("bias") or p.ndim < 2:
                no_decay.add(id(p))
    by_depth = layer_decay != 1.0 or head_only_steps > 0
    depths = layer_depths(model) if by_depth else {}
    groups: dict[tuple[int, bool], list] = {}
    seen: set[int] = set()
    for p in model.parameters():  # parameters() de-duplicates tied tensors
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        groups.setdefault((depths.get(id(p), 0), id(p) in no_decay), []).append(p)
    if not by_depth:
        return [{"params": groups.get((0, False), []), "weight_decay": weight_decay},
                {"params": groups.get((0, True), []), "weight_decay": 0.0}]
    return [{"params": params, "weight_decay": 0.0 if skip else weight_decay, "lr": lr * layer_decay**depth,
             "layer_depth": depth, "frozen_steps": head_only_steps if depth else 0}
            for (depth, skip), params in sorted(groups.items())]


FUSED_CAPABLE = ("adamw", "adam", "sgd", "adagrad")  # torch has a fused kernel for these...
FUSED_ON_GPU = ("adamw", "adam", "sgd")  # ... and for these also on CUDA (adagrad's is CPU-only)
FUSED_ON_CPU = ("adamw", "adam")  # picked by fused=auto on CPU (measured faster than the loop)


def build_optimizer(model: nn.Module, name: str = "adamw", lr: float = 1e-3, weight_decay: float = 0.0,
                    layer_decay: float = 1.0, head_only_steps: int = 0, **kwargs):
    """`name` picks the torch optimizer; remaining kwargs (betas, eps, momentum...) go to it.
    `layer_decay`: the learning rate per layer; `head_only_steps`: train only the heads first (module
    docstring). 1.0 and 0: one rate for all from the first step.

    `fused`: `auto` (default) uses the fused kernel where the optimizer has one for the device: every
    parameter on a GPU, or (AdamW / Adam) every parameter a plain CPU tensor, where the fused kernel
    made a step of the bare shakespeare loop 7-14% faster than torch's per-tensor loop. Sharded
    (DTensor) parameters keep torch's own default. true/false force it. `foreach` is passed through.
    """
    optimizers = {
        "adamw": torch.optim.AdamW,
        "adam": torch.optim.Adam,
        "sgd": torch.optim.SGD,
        "rmsprop": torch.optim.RMSprop,
        "adagrad": torch.optim.Adagrad,
    }
    if name not in optimizers:
        raise ConfigError(f"optimizer.name={name!r} is unknown; use one of {sorted(optimizers)}")
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    fused = kwargs.pop("fused", "auto")
    if fused == "auto":
        params = list(model.parameters())
        on_gpu = all(p.device.type == "cuda" for p in params)
        plain_cpu = all(p.device.type == "cpu" and type(p.data) is torch.Tensor for p in params)
        fused = True if (name in FUSED_ON_GPU and on_gpu) or (name in FUSED_ON_CPU and plain_cpu) else None
    if fused and name not in FUSED_CAPABLE:
        raise ConfigError(f"optimizer.fused=true: torch has no fused {name}; set optimizer.fused=auto")
    if fused is not None:
        kwargs["fused"] = bool(fused)
    return optimizers[name](weight_decay_groups(model, weight_decay, lr, layer_decay, head_only_steps), lr=lr, **kwargs)


def check_optimizer_config(cfg: dict) -> None:
    """Reject optimizer settings torch would refuse only once training starts (a negative lr, a
    string where a number goes): built once on a one-weight stand-in, so every torch check runs."""
    cfg = dict(cfg)
    problems = []
    for key in ("lr", "weight_decay", "layer_decay"):
        value = cfg.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"optimizer.{key}={value!r} is not a number")
        elif key == "lr" and not value > 0:
            problems.append(f"optimizer.lr={value} must be positive, e.g. optimizer.lr=1e-3")
        elif key == "weight_decay" and value < 0:
            problems.append(f"optimizer.weight_decay={value} must be >= 0")
        elif key == "layer_decay" and not 0 < value <= 1:
            problems.append(f"optimizer.layer_decay={value} must be in (0, 1]; 1.0 gives every layer the same rate")
    steps = cfg.get("head_only_steps")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
        problems.append(f"optimizer.head_only_steps={steps!r} must be a whole number >= 0 (0: train everything from the start)")
    if problems:
        raise ConfigError("; ".join(problems))
    cfg.pop("layer_decay", None)  # checked above; the stand-in has no layers
    cfg.pop("head_only_steps", None)
    stand_in = nn.Module()
    stand_in.weight = nn.Parameter(torch.zeros(1, 1))  # not nn.Linear: its init would draw from the seeded RNG
    try:
        build_optimizer(stand_in, **cfg)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"optimizer settings rejected ({e}); fix the optimizer.* values") from None
