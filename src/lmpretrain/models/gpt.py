"""GPT-style decoder: token (+ position) embeddings, pre-norm blocks, tied LM head.

A plain `nn.Module` configured by `GPTConfig`; no Lightning or Hydra in here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lmpretrain.models.blocks import (
    Block,
    KVCache,
    LayerConfig,
    add_token_embeddings,
    cache_positions,
    embed_tokens,
    init_weights,
)
from lmpretrain.models.encoder import padding_mask


@dataclass
class GPTConfig(LayerConfig):
    vocab_size: int = 0  # 0 = taken from the tokenizer at build time
    block_size: int = 256  # longest sequence (context) the positions cover
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True
    mlp_ratio: int = 4
    position: str = "learned"  # learned | sinusoidal | rotary
    tie_embeddings: bool = True
    activation: str = "gelu"  # gelu | gelu_tanh (GPT-2's own weights) | relu



class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = c = config
        rotary = add_token_embeddings(self)
        self.pos_emb = nn.Embedding(c.block_size, c.n_embd) if c.position == "learned" else None
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            Block(c.n_embd, c.n_head, c.dropout, c.bias, c.mlp_ratio, rotary=rotary, activation=c.activation)
            for _ in range(c.n_layer)
        )
        self.norm = nn.LayerNorm(c.n_embd, bias=c.bias)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        if c.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.apply(init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layer) so the residual stream's
        # variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c.n_layer))

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and self.pos_emb is not None:
            n -= self.pos_emb.weight.numel()
        return n

    def new_cache(self) -> KVCache:
        """An empty key/value cache for one decoding call (`forward(..., cache=)`)."""
        return KVCache(len(self.blocks))

    def forward(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                positions: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        """idx: (B, T) token ids -> logits (B, T, vocab). Keywords: see `features`."""
        return self.lm_head(self.features(idx, attention_mask, positions=positions, cache=cache))

    def features(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                 positions: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        """idx: (B, T) -> final-norm hidden states (B, T, C).

        Training and fine-tuning: causal, so right padding never reaches the real tokens and
        `attention_mask` is not needed (it is ignored). Decoding (`models/generation.py`) passes
        `cache` (keys and values of the tokens before idx, extended in place) and/or `positions`
        ((T,) or (B, T); default: after the cached tokens); then `attention_mask` (B, cached + T),
        1 = token, masks the padding of left-padded prompts.
        """
        decoding = cache is not None or positions is not None
        if positions is None:
            positions = cache_positions(cache, idx.size(1), self.config.block_size, idx.device)
        mask = padding_mask(attention_mask) if decoding else None
        x = self.drop(embed_tokens(self, idx, self.pos_emb, positions))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, causal=True, mask=mask, cache=None if cache is None else cache.layers[i],
                      positions=positions)
        return self.norm(x)

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Extend idx (B, T) by max_new_tokens sampled tokens -> (B, T + max_new_tokens).
        temperature=0 is greedy; top_k keeps the k likeliest. The full set of strategies (beam,
        top-p, EOS, padded prompts) is `lmpretrain.models.generation.generate`."""
        from lmpretrain.models.generation import generate

        new = generate(self, idx, max_new_tokens=max_new_tokens, strategy="sample", temperature=temperature,
                       top_k=top_k, generator=generator)
        return torch.cat((idx, new), dim=1)
