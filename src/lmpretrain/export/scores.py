"""How much a compressed network changed: held-out perplexity (causal LMs) and how often its top-1
output agrees with the original's, on the tail of a text file read with the network's tokenizer."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from lmpretrain.errors import ConfigError
from lmpretrain.models import GPT


def heldout_blocks(path: Path, tokenizer_json: str, block_size: int, val_fraction: float = 0.1,
                   max_blocks: int = 64) -> torch.Tensor:
    """(N, block_size + 1) token windows from the last `val_fraction` of the file (the training runs'
    `split: tail` validation text), non-overlapping, at most max_blocks of them."""
    if not path.is_file():
        raise ConfigError(f"heldout.file={path} does not exist; point it at a text file (under paths.data_dir)")
    text = path.read_text(encoding="utf-8")
    tail = text[int(len(text) * (1 - val_fraction)):]
    ids = torch.tensor(Tokenizer.from_str(tokenizer_json).encode(tail, add_special_tokens=False).ids)
    n = min(max_blocks, (ids.numel() - 1) // block_size)
    if n < 1:
        raise ConfigError(f"heldout.file={path}: its last {val_fraction:.0%} holds fewer than {block_size + 1} "
                          f"tokens; use a longer file or a larger heldout.val_fraction")
    return torch.stack([ids[i * block_size: i * block_size + block_size + 1] for i in range(n)])


def forward_fn(network: nn.Module, module: nn.Module | None = None):
    """ids (B, T) -> the network's output: next-token or MLM logits (B, T, V), or a sequence
    classifier's (B, labels) when `module` is a fine-tuned task module (pass the compressed network
    in: the module's forward reads `module.network`, which is swapped for the call)."""
    if module is None or not hasattr(network, "task_head"):
        return lambda ids: network(ids)

    def run(ids: torch.Tensor) -> torch.Tensor:
        original = module.network
        module.network = network
        try:
            return module({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
        finally:
            module.network = original

    return run


@torch.no_grad()
def compare(original, compressed, blocks: torch.Tensor, causal_lm: bool, batch_size: int = 16) -> dict:
    """{"ppl": (before, after)} for a causal LM, and top-1 agreement / largest output difference for
    every network. original, compressed: ids (B, T) -> outputs (see `forward_fn`)."""
    nll = [0.0, 0.0]
    agree = total = 0
    max_diff = 0.0
    for batch in blocks.split(batch_size):
        x, y = batch[:, :-1], batch[:, 1:]
        outs = [original(x), compressed(x)]
        if causal_lm:
            for i, out in enumerate(outs):
                nll[i] += F.cross_entropy(out.flatten(0, 1).float(), y.flatten(), reduction="sum").item()
        agree += int((outs[0].argmax(-1) == outs[1].argmax(-1)).sum())
        total += outs[0].argmax(-1).numel()
        max_diff = max(max_diff, (outs[0] - outs[1]).abs().max().item())
    scores = {"top1_agreement": agree / total, "max_abs_diff": max_diff}
    if causal_lm:
        n = blocks[:, 1:].numel()
        scores["ppl"] = {"before": math.exp(nll[0] / n), "after": math.exp(nll[1] / n)}
    return scores


def is_causal_lm(network: nn.Module) -> bool:
    return isinstance(network, GPT) and not hasattr(network, "task_head")
