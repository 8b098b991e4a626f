"""GPT-style decoder: token (+ position) embeddings, pre-norm blocks, tied LM head.

A plain `nn.Module` configured by `GPTConfig`; no Lightning or Hydra in here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmpretrain.models.blocks import Block, LayerConfig, add_token_embeddings, embed_tokens, init_weights


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

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx: (B, T) token ids -> logits (B, T, vocab)."""
        return self.lm_head(self.features(idx))

    def features(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """idx: (B, T) -> final-norm hidden states (B, T, C). Causal, so right padding (the only
        kind `attention_mask` may describe here) never reaches the real tokens."""
        x = self.drop(embed_tokens(self, idx, self.pos_emb))  # (B, T, C)
        for block in self.blocks:
            x = block(x, causal=True)
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
        """Extend idx (B, T) by max_new_tokens. temperature=0 is greedy; top_k keeps the k likeliest."""
        for _ in range(max_new_tokens):
            context = idx[:, -self.config.block_size :]
            logits = self(context)[:, -1, :]  # (B, vocab)
            if temperature == 0:
                next_id = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = F.softmax(logits, dim=-1)
                next_id = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat((idx, next_id), dim=1)
        return idx
