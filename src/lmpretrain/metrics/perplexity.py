"""Token-weighted mean negative log-likelihood and its perplexity, synced across ranks.

torchmetrics' `Perplexity` takes full logits and recomputes a softmax over the vocabulary: for a
50k vocabulary that is a second (B, T, V) tensor per validation batch. The loss the step already
computed carries the same information, so accumulate `sum(nll)` and the token count instead;
`tests/metrics` checks the result equals torchmetrics' `Perplexity`.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric


class TokenNLL(Metric):
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("nll_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, mean_nll: torch.Tensor, n_tokens: int | torch.Tensor) -> None:
        """mean_nll: the step's mean cross-entropy over its n_tokens target tokens."""
        self.nll_sum += mean_nll.detach().double() * n_tokens
        self.count += n_tokens

    def compute(self) -> torch.Tensor:
        return (self.nll_sum / self.count.clamp(min=1)).float()

    def perplexity(self) -> torch.Tensor:
        return torch.exp(self.compute())
