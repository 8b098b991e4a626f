"""Layer freezing (`freeze:` in conf/train.yaml): keep parts of a network fixed while the rest trains.

A frozen parameter gets `requires_grad=False`, so it receives no gradient and `weight_decay_groups`
leaves it out of the optimizer (no update, no weight decay, no optimizer state). With tied
embeddings the LM head *is* the token embedding, so freezing embeddings freezes the head too.
"""

from __future__ import annotations

from torch import nn

from lmpretrain.errors import ConfigError


def frozen_layers(layers: int | list[int] | None, n_layer: int) -> list[int]:
    """`layers`: N = the first N blocks, a list = those block indices, null = none."""
    if layers is None:
        return []
    if isinstance(layers, bool) or not isinstance(layers, (int, list, tuple)):
        raise ConfigError(f"freeze.layers={layers!r} must be a count (the first N blocks) or a list of block indices")
    indices = list(range(layers)) if isinstance(layers, int) else [int(i) for i in layers]
    if isinstance(layers, int) and not 0 <= layers <= n_layer or any(not 0 <= i < n_layer for i in indices):
        raise ConfigError(f"freeze.layers={layers!r} is out of range for a network of {n_layer} blocks "
                          f"(indices 0..{n_layer - 1}, or a count up to {n_layer})")
    return sorted(set(indices))


def freeze_parameters(network: nn.Module, embeddings: bool = False, layers: int | list[int] | None = None) -> list[str]:
    """Freeze every `nn.Embedding` of `network` (token, position, segment) when `embeddings`, and the
    transformer blocks `layers` (of `network.blocks`: GPT and BERT-style encoders). Returns the names
    of the parameters now frozen."""
    modules: list[nn.Module] = [m for m in network.modules() if isinstance(m, nn.Embedding)] if embeddings else []
    if layers is not None:
        blocks = getattr(network, "blocks", None)
        if not isinstance(blocks, nn.ModuleList):
            raise ConfigError(f"freeze.layers needs a network with one stack of blocks (GPT, BERT); "
                              f"{type(network).__name__} has none; set freeze.layers=null")
        modules += [blocks[i] for i in frozen_layers(layers, len(blocks))]
    frozen = {id(p) for m in modules for p in m.parameters()}
    names = []
    for name, p in network.named_parameters(remove_duplicate=False):  # a tied head shares the embedding's tensor
        if id(p) in frozen:
            p.requires_grad_(False)
            names.append(name)
    return names
