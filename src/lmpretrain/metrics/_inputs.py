"""The input convention of the text metrics: predictions, and per prediction one or more references."""

from __future__ import annotations


def as_reference_lists(predictions: list[str], references: list[str] | list[list[str]]) -> list[list[str]]:
    """One list of references per prediction (a plain string is one reference)."""
    if isinstance(predictions, str) or isinstance(references, str):
        raise TypeError("predictions and references are lists (one entry per example), not strings")
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    if len(refs) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions but {len(refs)} references")
    if any(len(r) == 0 for r in refs):
        raise ValueError("every prediction needs at least one reference")
    return refs
