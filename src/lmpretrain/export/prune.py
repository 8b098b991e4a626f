"""Pruning the Linear layers of the Transformer blocks with `torch.nn.utils.prune`, made permanent.

magnitude: the smallest |w| set to zero, `amount` of them per layer (scope=layer) or of all block
    weights together (scope=global, so layers that matter less lose more).
structured: whole units by L2 norm, in every block -- rows: MLP hidden neurons (the fc row, its bias
    and the proj column that reads it); heads: attention heads (their q/k/v rows and biases and the
    proj columns they feed). A removed unit contributes exactly nothing, so a later step could cut it
    out of the matrices; here they stay dense with zeros (the config has one width for every layer).

Embeddings, the LM/MLM head (tied to the embedding), the pooler and task heads are not pruned.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import prune

from lmpretrain.errors import ConfigError
from lmpretrain.models.blocks import MLP, Attention, Block

METHODS, SCOPES, UNITS = ("magnitude", "structured"), ("global", "layer"), ("rows", "heads")


def block_linears(network: nn.Module) -> list[nn.Linear]:
    """Every nn.Linear inside a Transformer block, in module order."""
    blocks = [m for m in network.modules() if isinstance(m, Block)]
    return [m for b in blocks for m in b.modules() if isinstance(m, nn.Linear)]


def check_prune_args(method: str, amount: float, scope: str = "global", unit: str = "rows") -> None:
    problems = [msg for bad, msg in [
        (method not in METHODS, f"prune.method={method!r} must be one of {METHODS}"),
        (not 0.0 <= amount < 1.0, f"prune.amount={amount} must be in [0, 1) (the fraction removed)"),
        (method == "magnitude" and scope not in SCOPES, f"prune.scope={scope!r} must be one of {SCOPES}"),
        (method == "structured" and unit not in UNITS, f"prune.unit={unit!r} must be one of {UNITS}"),
    ] if bad]
    if problems:
        raise ConfigError("; ".join(problems))


def prune_network(network: nn.Module, method: str, amount: float, scope: str = "global",
                  unit: str = "rows") -> nn.Module:
    """A pruned copy of `network` (see the module docstring); `network` itself is left unchanged."""
    check_prune_args(method, amount, scope, unit)
    net = copy.deepcopy(network).eval()
    if method == "magnitude":
        params = [(m, "weight") for m in block_linears(net)]
        if scope == "global":
            prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
        else:
            for m, name in params:
                prune.l1_unstructured(m, name, amount=amount)
    elif unit == "rows":
        for mlp in (m for m in net.modules() if isinstance(m, MLP)):
            prune.ln_structured(mlp.fc, "weight", amount=amount, n=2, dim=0)  # (hidden, C): whole rows
            keep = mlp.fc.weight_mask[:, 0]  # (hidden,) 1 = neuron kept
            _mask_units(mlp.fc, mlp.proj, keep)
    else:
        for attn in (m for m in net.modules() if isinstance(m, Attention)):
            _prune_heads(attn, amount)
    for m in net.modules():  # fold weight_orig * weight_mask into a plain weight again
        for name in ("weight", "bias"):
            if prune.is_pruned(m) and hasattr(m, f"{name}_mask"):
                prune.remove(m, name)
    return net


def _mask_units(producers: nn.Linear | list[nn.Linear], consumer: nn.Linear, keep: torch.Tensor) -> None:
    """Zero units (output features) where keep == 0: their rows and biases in `producers` (those
    not masked yet) and the `consumer` columns that read them."""
    for lin in producers if isinstance(producers, list) else [producers]:
        if not hasattr(lin, "weight_mask"):
            prune.custom_from_mask(lin, "weight", keep[:, None].expand_as(lin.weight))
        if lin.bias is not None:
            prune.custom_from_mask(lin, "bias", keep)
    prune.custom_from_mask(consumer, "weight", keep[None, :].expand_as(consumer.weight))


def _prune_heads(attn: Attention, amount: float) -> None:
    """Zero the round(amount * heads) heads whose q, k, v rows have the smallest L2 norm."""
    hd = attn.head_dim
    n_head = attn.q.out_features // hd
    rows = torch.cat([lin.weight.detach().view(n_head, hd, -1) for lin in (attn.q, attn.k, attn.v)], dim=1)
    scores = rows.pow(2).sum(dim=(1, 2))  # (n_head,) squared L2 norm of each head's q/k/v rows
    n_drop = round(amount * n_head)
    keep_head = torch.ones(n_head)
    keep_head[scores.argsort()[:n_drop]] = 0
    _mask_units([attn.q, attn.k, attn.v], attn.proj, keep_head.repeat_interleave(hd))


def sparsity(network: nn.Module) -> dict[str, float]:
    """Fraction of exact zeros in the blocks' Linear weights and in all parameters (tied ones once)."""
    weights = [m.weight for m in block_linears(network)]
    params = list({id(p): p for p in network.parameters()}.values())
    zeros = sum(int((w == 0).sum()) for w in weights)
    return {"block_linear_sparsity": zeros / max(1, sum(w.numel() for w in weights)),
            "sparsity": sum(int((p == 0).sum()) for p in params) / sum(p.numel() for p in params),
            "nonzero_params": sum(int((p != 0).sum()) for p in params)}
