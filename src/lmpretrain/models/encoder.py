"""BERT-style bidirectional encoder: token + position (+ segment) embeddings, blocks without a
causal mask, a [CLS] pooler and a masked-LM head tied to the token embedding.

Post-norm (`pre_norm=False`, original BERT) normalizes the embeddings and every sublayer's
output; pre-norm normalizes sublayer inputs and adds one final norm instead. A plain `nn.Module`
configured by `EncoderConfig`; no Lightning or Hydra in here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lmpretrain.models.blocks import (
    ACTIVATIONS,
    Block,
    LayerConfig,
    Rotary,
    add_token_embeddings,
    embed_tokens,
    init_weights,
)
from lmpretrain.models.pooling import pool


@dataclass
class EncoderConfig(LayerConfig):
    vocab_size: int = 0  # 0 = taken from the tokenizer at build time
    block_size: int = 128  # longest sequence the positions cover (BERT: max_position_embeddings)
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 128
    mlp_ratio: int = 4
    dropout: float = 0.1
    bias: bool = True
    type_vocab_size: int = 2  # segment ids (sentence A / B); 0 = no segment embedding
    pre_norm: bool = False  # False = BERT's post-norm
    norm_eps: float = 1e-12  # BERT's LayerNorm epsilon
    position: str = "learned"  # learned | sinusoidal | rotary
    activation: str = "gelu"  # gelu | gelu_tanh | relu
    tie_embeddings: bool = True



def padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, S) with 1 = real token -> bool (B, 1, 1, S) for attention, True = may attend."""
    return None if attention_mask is None else attention_mask.bool()[:, None, None, :]


def encoder_stack(c: EncoderConfig, rotary: Rotary | None) -> tuple[nn.ModuleList, nn.LayerNorm | None]:
    """The bidirectional blocks of shape `c` and, for pre-norm, the final norm (ELECTRA's generator
    builds its narrower stack with this too)."""
    blocks = nn.ModuleList(
        Block(c.n_embd, c.n_head, c.dropout, c.bias, c.mlp_ratio, rotary=rotary, pre_norm=c.pre_norm,
              norm_eps=c.norm_eps, activation=c.activation)
        for _ in range(c.n_layer)
    )
    return blocks, (nn.LayerNorm(c.n_embd, eps=c.norm_eps) if c.pre_norm else None)


class MLMHead(nn.Module):
    """BERT's prediction head: dense + activation + norm, then the (tied) vocabulary projection."""

    def __init__(self, c: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(c.n_embd, c.n_embd)
        self.act = ACTIVATIONS[c.activation]
        self.norm = nn.LayerNorm(c.n_embd, eps=c.norm_eps)
        self.decoder = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(c.vocab_size))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h: (..., C) -> logits (..., vocab)."""
        return self.decoder(self.norm(self.act(self.dense(h)))) + self.bias


class Encoder(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = c = config
        rotary = add_token_embeddings(self)
        self.pos_emb = nn.Embedding(c.block_size, c.n_embd) if c.position == "learned" else None
        self.seg_emb = nn.Embedding(c.type_vocab_size, c.n_embd) if c.type_vocab_size else None
        # Post-norm normalizes the summed embeddings (BERT); pre-norm normalizes the output instead.
        self.emb_norm = None if c.pre_norm else nn.LayerNorm(c.n_embd, eps=c.norm_eps)
        self.drop = nn.Dropout(c.dropout)
        self.blocks, self.final_norm = encoder_stack(c, rotary)
        self.pooler = nn.Linear(c.n_embd, c.n_embd)
        # NSP / SOP classifier on the pooled state (BERT's `cls.seq_relationship`): part of the network
        # so the optimizer, DDP and FSDP all see it like every other weight.
        self.pair_head = nn.Linear(c.n_embd, 2)
        self.mlm_head = MLMHead(c)
        if c.tie_embeddings:
            self.mlm_head.decoder.weight = self.tok_emb.weight
        self.apply(init_weights)

    def features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids, attention_mask (1 = token, 0 = padding), token_type_ids: (B, T) -> (B, T, C)."""
        x = self.drop(self.embed(input_ids, token_type_ids))
        mask = padding_mask(attention_mask)
        for block in self.blocks:
            x = block(x, mask=mask)
        return x if self.final_norm is None else self.final_norm(x)

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Token + position (+ segment) embeddings, normalized for post-norm: (B, T) -> (B, T, C), before
        dropout. ELECTRA's generator reads the same embeddings (objectives/electra.py)."""
        x = embed_tokens(self, input_ids, self.pos_emb)
        if self.seg_emb is not None:
            x = x + self.seg_emb(torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids)
        return x if self.emb_norm is None else self.emb_norm(x)

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        """BERT's pooled output: tanh(dense(h[:, 0])), the [CLS] summary used by NSP/SOP. (B, C)."""
        return torch.tanh(self.pooler(pool(h, None, "cls")))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """Masked-LM logits for every position: (B, T, vocab)."""
        return self.mlm_head(self.features(input_ids, attention_mask, token_type_ids))
