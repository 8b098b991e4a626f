"""One pooling function, (B, T, C) hidden states -> (B, C), for every head that reads a sequence whole."""

from __future__ import annotations

import torch

POOLINGS = ("cls", "mean", "last")


def pool(h: torch.Tensor, mask: torch.Tensor | None, how: str) -> torch.Tensor:
    """cls = the first position (BERT's [CLS]); last = the last real token (a causal decoder has
    read the whole text only there; assumes right padding); mean = the mean over real tokens.
    h: (B, T, C); mask: (B, T), 1 on real tokens, None = all real."""
    if how == "cls":
        return h[:, 0]
    if mask is None:
        mask = torch.ones(h.shape[:2], dtype=torch.long, device=h.device)
    if how == "last":
        return h[torch.arange(h.size(0), device=h.device), mask.sum(1) - 1]
    if how == "mean":
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1)
    raise ValueError(f"pooling {how!r} is not one of {POOLINGS}")
