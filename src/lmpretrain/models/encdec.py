"""T5-style encoder-decoder: a bidirectional encoder, a causal decoder whose blocks cross-attend
to the encoder's output, one token embedding shared by both and by the (tied) output head.

Differences from T5, on purpose: positions are rotary (default) or absolute instead of T5's
bucketed relative-position bias, and norms are LayerNorm (without bias when `bias=False`) rather
than RMSNorm, so every block here is the same `Block` the decoder-only and encoder models use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmpretrain.models.blocks import (
    AttentionCache,
    Block,
    KVCache,
    LayerConfig,
    Rotary,
    add_token_embeddings,
    cache_positions,
    embed_tokens,
    init_weights,
)
from lmpretrain.models.encoder import padding_mask


@dataclass
class EncoderDecoderConfig(LayerConfig):
    vocab_size: int = 0  # 0 = taken from the tokenizer at build time
    block_size: int = 128  # longest encoder or decoder sequence
    n_layer: int = 2  # encoder layers
    n_decoder_layer: int | None = None  # None = same as n_layer
    n_head: int = 4
    n_embd: int = 128
    mlp_ratio: int = 4
    dropout: float = 0.1
    bias: bool = False  # T5 has no biases
    position: str = "rotary"  # rotary | learned | sinusoidal
    activation: str = "gelu"  # gelu | gelu_tanh | relu (T5 v1.0)
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_decoder_layer is None:
            self.n_decoder_layer = self.n_layer


class CopyHead(nn.Module):
    """Pointer-generator (See et al. 2017): the next token is written from the vocabulary or copied
    from the source. Attention over the encoder's output (n_head heads, their distributions
    averaged) gives a copy distribution over source positions; a gate p_gen (from the decoder state
    and the attended context) mixes the two:

        p(w) = p_gen * softmax(logits)(w) + (1 - p_gen) * attention on the source tokens equal to w

    Why: a small model from scratch learns to copy a source's rare words (package names, terms) far
    sooner through a pointer than by growing their rows in a softmax over the whole vocabulary.
    With rotary positions the queries and keys are rotated by the target and source positions, as
    in the decoder's cross-attention: a rotary encoder's output carries no absolute position, and
    without them "copy the source in order" was not learned (test accuracy 0.18 after 400 steps of
    a copy task vs 0.78 with learned positions; with them 1.0 after 100). The output is log p
    (normalised), so cross-entropy (log_softmax is the identity on it) and every decoding strategy
    take it unchanged.
    """

    def __init__(self, config: EncoderDecoderConfig):
        super().__init__()
        c = config
        self.n_head = c.n_head
        self.query = nn.Linear(c.n_embd, c.n_embd, bias=False)
        self.key = nn.Linear(c.n_embd, c.n_embd, bias=False)
        self.gate = nn.Linear(2 * c.n_embd, 1)
        self.rotary = Rotary(c.head_dim, c.block_size) if c.position == "rotary" else None
        for lin in (self.query, self.key, self.gate):
            nn.init.normal_(lin.weight, std=0.02)
        nn.init.zeros_(self.gate.bias)  # p_gen = 0.5 at the start

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:2], self.n_head, -1).transpose(1, 2)  # (B, heads, T, hs)

    def forward(self, logits: torch.Tensor, hidden: torch.Tensor, memory: torch.Tensor,
                memory_mask: torch.Tensor | None, source_ids: torch.Tensor,
                positions: torch.Tensor | None = None, cache: AttentionCache | None = None) -> torch.Tensor:
        """logits (B, T, V), hidden (B, T, C) decoder states at `positions` (T,) (None = 0..T-1),
        memory (B, S, C), memory_mask (B, S) 1 = token, source_ids (B, S) -> log p (B, T, V), float32.
        Decoding step by step, `cache` keeps the memory's keys from the first call (as the
        cross-attention's): they are most of this head's work on one new token."""
        hidden, memory = hidden.float(), memory.float()
        q = self._heads(self.query(hidden))
        if cache is not None and cache.k is not None:
            k = cache.k
        else:
            k = self._heads(self.key(memory))
            k = k if self.rotary is None else self.rotary(k)
            if cache is not None:  # keys only: the head reads the memory itself, which its caller keeps
                cache.k = k
        if self.rotary is not None:
            q = self.rotary(q, positions)
        scores = q @ k.transpose(-1, -2) * q.size(-1) ** -0.5  # (B, heads, T, S)
        if memory_mask is not None:
            scores = scores.masked_fill(~memory_mask.bool()[:, None, None, :], float("-inf"))
        attn = scores.softmax(-1).mean(1)  # (B, T, S)
        p_gen = torch.sigmoid(self.gate(torch.cat((hidden, attn @ memory), -1)))  # (B, T, 1)
        index = source_ids[:, None, :].expand(-1, hidden.size(1), -1)
        copied = torch.zeros_like(logits, dtype=torch.float32).scatter_add_(-1, index, attn)
        p = p_gen * F.softmax(logits.float(), -1) + (1 - p_gen) * copied
        # The clamp keeps log finite where both parts underflow (its gradient is 0 there, not nan).
        return p.clamp_min(1e-12).log()


class EncoderDecoder(nn.Module):
    def __init__(self, config: EncoderDecoderConfig):
        super().__init__()
        self.config = c = config
        rotary = add_token_embeddings(self)
        learned = c.position == "learned"
        self.enc_pos = nn.Embedding(c.block_size, c.n_embd) if learned else None
        self.dec_pos = nn.Embedding(c.block_size, c.n_embd) if learned else None
        self.drop = nn.Dropout(c.dropout)

        def block(cross: bool) -> Block:
            return Block(c.n_embd, c.n_head, c.dropout, c.bias, c.mlp_ratio, rotary=rotary, cross=cross,
                         norm_eps=c.norm_eps, activation=c.activation)

        self.encoder = nn.ModuleList(block(cross=False) for _ in range(c.n_layer))
        self.enc_norm = nn.LayerNorm(c.n_embd, eps=c.norm_eps, bias=c.bias)
        self.decoder = nn.ModuleList(block(cross=True) for _ in range(c.n_decoder_layer))
        self.dec_norm = nn.LayerNorm(c.n_embd, eps=c.norm_eps, bias=c.bias)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight
        self.apply(init_weights)
        # T5 (Mesh TensorFlow, HF `T5PreTrainedModel._init_weights`) draws the shared embedding from
        # N(0, 1): the decoder's output is scaled by n_embd**-0.5 before the tied head, so with GPT's
        # N(0, 0.02) every initial logit is ~0.02 and the model spends its first thousand steps growing
        # the embedding (300 steps of translation learned nothing; a 2-pair memorization took 400
        # steps instead of 50).
        nn.init.normal_(self.tok_emb.weight, std=1.0)
        # `Seq2SeqModule(copy_source=true)` sets a `CopyHead` (new at fine-tuning: no pretraining has it)
        self.copy_head: CopyHead | None = None

    def _embed(self, ids: torch.Tensor, pos: nn.Embedding | None, positions: torch.Tensor | None = None) -> torch.Tensor:
        return self.drop(embed_tokens(self, ids, pos, positions))

    def new_cache(self) -> KVCache:
        """An empty decoder cache (self- and cross-attention keys/values) for one decoding call."""
        return KVCache(len(self.decoder), cross=True)

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder: input_ids (B, S), attention_mask (B, S) 1 = token -> memory (B, S, C)."""
        x, mask = self._embed(input_ids, self.enc_pos), padding_mask(attention_mask)
        for blk in self.encoder:
            x = blk(x, mask=mask)
        return self.enc_norm(x)

    def decode(self, decoder_input_ids: torch.Tensor, memory: torch.Tensor,
               attention_mask: torch.Tensor | None = None, *, cache: KVCache | None = None,
               source_ids: torch.Tensor | None = None) -> torch.Tensor:
        """decoder_input_ids (B, T), memory (B, S, C) -> logits (B, T, vocab).

        Decoding step by step: `cache` (from `new_cache()`) holds the decoder's keys and values so
        far and each layer's cross-attention keys/values of `memory` (computed on the first call,
        reused after); decoder_input_ids are then only the new tokens, placed after the cached ones.
        With a `copy_head`, `source_ids` (B, S) (the encoder's input) are needed and the output is
        log-probabilities of the pointer-generator mixture instead of logits.
        """
        positions = cache_positions(cache, decoder_input_ids.size(1), self.config.block_size,
                                    decoder_input_ids.device)
        x, memory_mask = self._embed(decoder_input_ids, self.dec_pos, positions), padding_mask(attention_mask)
        for i, blk in enumerate(self.decoder):
            x = blk(x, causal=True, memory=memory, memory_mask=memory_mask,
                    cache=None if cache is None else cache.layers[i], positions=positions)
        hidden = self.dec_norm(x)
        # T5 rescales before the tied head so logits do not grow with sqrt(n_embd).
        logits = self.lm_head(hidden * self.config.n_embd**-0.5)
        if self.copy_head is None:
            return logits
        if source_ids is None:
            raise ValueError("an EncoderDecoder with a copy_head needs source_ids (the encoder's input ids)")
        return self.copy_head(logits, hidden, memory, attention_mask, source_ids, positions,
                              None if cache is None else cache.memory)

    def forward(self, input_ids, decoder_input_ids, attention_mask=None) -> torch.Tensor:
        return self.decode(decoder_input_ids, self.features(input_ids, attention_mask), attention_mask,
                           source_ids=input_ids)
