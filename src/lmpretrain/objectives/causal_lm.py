"""Causal language modelling: predict token t+1 from tokens <= t.

`causal_lm_loss` is the one implementation of the loss, with the fused path that never holds the
(tokens, vocab) logits; `CausalLMLoss` wraps it for `CausalLMModule` and for multitask mixtures.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch.utils.checkpoint import checkpoint

from lmpretrain.metrics import TokenNLL
from lmpretrain.models import GPT
from lmpretrain.module import RuntimeOptions
from lmpretrain.objectives.pretrain import Loss, PretrainModule


def _chunk_loss_sum(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(hidden @ weight.T, labels, ignore_index=-100, reduction="sum")


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` against labels (-100 ignored), `chunk` rows at a time.

    hidden: (N, C); weight: (V, C); labels: (N,). Peak extra memory is one (chunk, V) logits block:
    each chunk is recomputed in backward rather than stored.
    """
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.size(0), chunk):
        h, y = hidden[start : start + chunk], labels[start : start + chunk]
        total = total + checkpoint(_chunk_loss_sum, h, weight, y, use_reentrant=False).float()
    return total / (labels != -100).sum().clamp(min=1)


def causal_lm_loss(network: GPT, batch: dict[str, torch.Tensor], runtime: RuntimeOptions) -> torch.Tensor:
    """Mean next-token cross-entropy of `batch` ({"input_ids": (B, T), "labels": (B, T)}, -100 ignored)."""
    if runtime.fused_loss:
        hidden = network.features(batch["input_ids"])  # (B, T, C)
        return linear_cross_entropy(hidden.flatten(0, 1), network.lm_head.weight, batch["labels"].flatten(),
                                    runtime.loss_chunk_tokens)
    logits = network(batch["input_ids"])  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)


class CausalLMLoss(Loss):
    """Next-token prediction; validation logs `loss` (mean NLL per token) and `ppl`."""

    needs = (GPT,)
    uses_every_parameter = True

    def __init__(self):
        super().__init__()
        self.val_nll = TokenNLL()
        self.runtime = RuntimeOptions()

    def connect(self, tokenizer: Tokenizer, runtime: RuntimeOptions) -> None:
        self.runtime = runtime

    def forward(self, network, batch, seed):
        return {"loss": causal_lm_loss(network, batch, self.runtime)}

    def val_update(self, network, batch, seed):
        self.val_nll.update(causal_lm_loss(network, batch, self.runtime), int((batch["labels"] != -100).sum()))

    def val_compute(self):
        # compute() syncs the sums across ranks, so every rank logs the global value.
        return {"loss": self.val_nll.compute(), "ppl": self.val_nll.perplexity()}


class CausalLMModule(PretrainModule):
    """`objective=causal_lm` on a GPT. Batches are `{"input_ids": (B, T), "labels": (B, T)}`."""

    def __init__(self, model: dict, optimizer: dict | None = None, scheduler: dict | None = None, seed: int = 0):
        super().__init__(model, optimizer, scheduler, seed)
        self.save_hyperparameters()
        self.set_losses({"causal_lm": CausalLMLoss()})

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.network(input_ids)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None, *,
                 top_p: float | None = None, strategy: str = "sample", **options) -> torch.Tensor:
        """Prompt + continuation (B, T + n): `lmpretrain.models.generation.generate` (default:
        sampling, temperature=0 = greedy) with `options` passed on (attention_mask, num_beams,
        length_penalty, eos_id, pad_id, use_cache); the network is in eval mode meanwhile."""
        from lmpretrain.models.generation import generate

        new = generate(self.network, input_ids, max_new_tokens=max_new_tokens, strategy=strategy,
                       temperature=temperature, top_k=top_k, top_p=top_p, generator=generator, **options)
        return torch.cat((input_ids, new), dim=1)
