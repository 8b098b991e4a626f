"""Transformer building blocks shared by the decoder, encoder and encoder-decoder.

A block reads like the math: `h = x + attn(norm(x)); out = h + mlp(norm(h))` (pre-norm).
Attention uses `F.scaled_dot_product_attention`, so the fused kernels (flash / memory-efficient
on GPU) are picked automatically.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmpretrain.errors import ConfigError

POSITIONS = ("learned", "sinusoidal", "rotary")
# gelu: exact (erf) GELU, as BERT; gelu_tanh: the tanh approximation GPT-2 was trained with
# ("gelu_new" in transformers); relu: the original Transformer and T5 v1.0.
ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


class LayerConfig:
    """What the three network configs (dataclasses with n_embd, n_head, position, activation,
    dropout fields) share: the checks run on construction, all problems reported at once as one
    ConfigError naming the keys, and the per-head width."""

    def __post_init__(self) -> None:
        problems = []
        if self.n_embd % self.n_head:
            problems.append(f"model.n_embd={self.n_embd} must be divisible by model.n_head={self.n_head}")
        if self.position not in POSITIONS:
            problems.append(f"model.position={self.position!r} must be one of {POSITIONS}")
        elif self.position == "rotary" and (self.n_embd // self.n_head) % 2:
            problems.append("model.position=rotary needs an even head size (n_embd / n_head)")
        if self.activation not in ACTIVATIONS:
            problems.append(f"model.activation={self.activation!r} must be one of {sorted(ACTIVATIONS)}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"model.dropout={self.dropout} must be in [0, 1)")
        if problems:
            raise ConfigError("; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


def init_weights(module: nn.Module) -> None:
    """GPT-2/BERT initialisation, for `model.apply`: N(0, 0.02) matrices and embeddings, zero biases
    (norms keep their unit gain)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def add_token_embeddings(model: nn.Module) -> Rotary | None:
    """Give `model` (configured by `model.config`) its token embedding `tok_emb` and, for
    `position=sinusoidal`, the fixed `pos_table`; return the rotary table its blocks share when
    `position=rotary` (else None). Learned position tables stay with each network (the
    encoder-decoder has one per stack) and are created right after this call, so parameters are
    drawn from the random stream in the same order in every network."""
    c = model.config
    if c.vocab_size <= 0:
        raise ConfigError("model.vocab_size is unset; it comes from the tokenizer (build via train())")
    model.tok_emb = nn.Embedding(c.vocab_size, c.n_embd)
    if c.position == "sinusoidal":
        model.register_buffer("pos_table", sinusoidal_table(c.block_size, c.n_embd), persistent=False)
    return Rotary(c.head_dim, c.block_size) if c.position == "rotary" else None


def embed_tokens(
    model: nn.Module,
    ids: torch.Tensor,
    learned: nn.Embedding | None = None,
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """ids (B, T) -> token embeddings plus absolute positions (B, T, C), for any of the networks.

    `learned` is the model's position table (the encoder-decoder has one per stack); a model with
    `position=sinusoidal` adds its fixed `pos_table`; rotary positions act inside attention instead.
    `positions` ((T,) or (B, T), each < block_size) replaces 0..T-1: decoding with a cache starts
    after the cached tokens, and left-padded rows start their real tokens at 0.
    """
    T, block_size = ids.size(1), model.config.block_size
    if positions is None and T > block_size:
        raise ValueError(f"sequence length {T} exceeds model.block_size={block_size}")
    x = model.tok_emb(ids)  # (B, T, C)
    if positions is not None:
        if learned is not None:
            return x + learned(positions)
        if model.config.position == "sinusoidal":
            return x + model.pos_table[positions].to(x.dtype)
        return x
    if learned is not None:
        return x + learned(torch.arange(T, device=ids.device))
    if model.config.position == "sinusoidal":
        return x + model.pos_table[:T].to(x.dtype)
    return x


def cache_positions(cache: KVCache | None, T: int, block_size: int, device) -> torch.Tensor | None:
    """Positions of T tokens that follow the cached ones (None without a cache: 0..T-1)."""
    if cache is None:
        return None
    start = cache.length
    if start + T > block_size:
        raise ValueError(f"sequence length {start + T} exceeds model.block_size={block_size}")
    return torch.arange(start, start + T, device=device)


def sinusoidal_table(n_positions: int, dim: int) -> torch.Tensor:
    """The fixed sin/cos position table of "Attention Is All You Need": (n_positions, dim)."""
    pos = torch.arange(n_positions, dtype=torch.float32)[:, None]
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(n_positions, dim)
    table[:, 0::2] = torch.sin(pos * inv_freq)
    table[:, 1::2] = torch.cos(pos * inv_freq[: dim // 2])
    return table


class Rotary(nn.Module):
    """Rotary position embedding (RoPE, Su et al. 2021), applied to queries and keys."""

    def __init__(self, head_dim: int, max_positions: int, base: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)  # (T, hs/2)
        # Not persistent: derived from the config, so checkpoints stay free of them.
        self.register_buffer("cos", freqs.cos(), persistent=False)
        self.register_buffer("sin", freqs.sin(), persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, nh, T, hs) -> same shape, each (even, odd) pair rotated by its position's angle.
        positions: (T,) or (B, T); None = 0..T-1."""
        if positions is None:
            T = x.size(-2)
            cos, sin = self.cos[:T].to(x.dtype), self.sin[:T].to(x.dtype)
        else:
            cos, sin = self.cos[positions].to(x.dtype), self.sin[positions].to(x.dtype)
            if positions.dim() == 2:  # (B, T, hs/2) -> (B, 1, T, hs/2): the same for every head
                cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
        return out.flatten(-2)


class AttentionCache:
    """The keys and values one attention layer has computed: k, v (B, heads, length, head_dim),
    rotary already applied. Self-attention appends each step's; cross-attention fills it once from
    the encoder output and reuses it. A head that needs only keys (the copy head) sets `k` and
    leaves `v` None."""

    __slots__ = ("k", "v")

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.size(-2)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add this step's keys and values (B, heads, T, hs); return all of them so far."""
        if self.k is not None:
            k, v = torch.cat((self.k, k), dim=-2), torch.cat((self.v, v), dim=-2)
        self.k, self.v = k, v
        return k, v

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows `index` (beam search: each surviving beam takes its parent's keys)."""
        if self.k is not None:
            self.k = self.k.index_select(0, index)
        if self.v is not None:
            self.v = self.v.index_select(0, index)


class LayerCache:
    """One block's caches: its self-attention and (encoder-decoder) its cross-attention."""

    __slots__ = ("attn", "cross")

    def __init__(self, cross: bool = False) -> None:
        self.attn = AttentionCache()
        self.cross = AttentionCache() if cross else None


class KVCache:
    """Keys and values of every block of a decoder stack, for decoding one token at a time.

    `layers[i]` is block i's `LayerCache`; `length` is how many positions are cached (the same in
    every layer), so the next token's position is `length`. Create an empty one per generation call
    (`KVCache(n_layer, cross=...)`) and pass it to every forward of that call.
    """

    def __init__(self, n_layer: int, cross: bool = False) -> None:
        self.layers = [LayerCache(cross) for _ in range(n_layer)]
        # the keys of a head after the stack that reads the encoder output (an encoder-decoder's copy head)
        self.memory = AttentionCache() if cross else None

    @property
    def length(self) -> int:
        return self.layers[0].attn.length if self.layers else 0

    def reorder(self, index: torch.Tensor, cross: bool = True) -> None:
        """Keep rows `index` of every cache. `cross=False` leaves the cross-attention keys alone:
        right when `index` only moves rows among the beams of one source (they share them)."""
        for layer in self.layers:
            layer.attn.reorder(index)
            if cross and layer.cross is not None:
                layer.cross.reorder(index)
        if cross and self.memory is not None:
            self.memory.reorder(index)


class Attention(nn.Module):
    """Multi-head attention: self-attention when `kv` is None, cross-attention otherwise.

    Separate q, k and v projections (not one fused matrix) so tensor parallelism can split each
    column-wise by heads; the head count is read from the projection's output width, so the same
    code runs on all heads or on this rank's share of them (`TENSOR_PARALLEL_PLAN`).
    """

    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool, rotary: Rotary | None = None):
        super().__init__()
        assert n_embd % n_head == 0
        self.head_dim, self.dropout = n_embd // n_head, dropout
        self.q = nn.Linear(n_embd, n_embd, bias=bias)
        self.k = nn.Linear(n_embd, n_embd, bias=bias)
        self.v = nn.Linear(n_embd, n_embd, bias=bias)
        self.proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)
        self.rotary = rotary

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, heads here, T, hs)

    def forward(
        self,
        x: torch.Tensor,
        kv: torch.Tensor | None = None,
        causal: bool = False,
        mask: torch.Tensor | None = None,
        cache: AttentionCache | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (B, T, C); kv: (B, S, C) or None; mask: bool (B, 1, T|1, S), True = may attend.

        Decoding: `cache` holds earlier keys and values. Self-attention appends this call's (its
        queries sit at positions `cache.length`.., or `positions` (T,) / (B, T) when given, e.g.
        per-row for left-padded prompts); cross-attention computes them from `kv` on the first call
        and reuses them after. With a causal mask, `mask` marks valid keys (padding) and each query
        also always sees itself, so a padding query never has an empty row.
        """
        B, T, _ = x.shape
        self_attention = kv is None
        past = cache.length if cache is not None and self_attention else 0  # keys before these queries
        if positions is None and past:
            positions = torch.arange(past, past + T, device=x.device)
        q = self._heads(self.q(x))
        if self.rotary is not None:
            q = self.rotary(q, positions)
        if not self_attention and cache is not None and cache.k is not None:  # cross-attention, cached
            k, v = cache.k, cache.v
        else:
            source = x if self_attention else kv
            k, v = self._heads(self.k(source)), self._heads(self.v(source))
            if self.rotary is not None:
                k = self.rotary(k, positions if self_attention else None)
            if cache is not None:
                k, v = cache.append(k, v)
        if causal and mask is None and past and T == 1:
            causal = False  # one new query after the cache: it sees every key
        elif causal and (mask is not None or past):
            # Explicit causal mask, aligned so query i (absolute position past + i) sees keys <= it.
            # Only decoding gets here; training calls take the `is_causal` kernel path below.
            i = torch.arange(past, past + T, device=x.device)[:, None]
            j = torch.arange(k.size(-2), device=x.device)[None, :]
            allowed = j <= i  # (T, S)
            if mask is not None:
                allowed = allowed & (mask | (j == i))
            mask, causal = allowed, False
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=causal
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, -1)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    def __init__(self, n_embd: int, hidden: int, dropout: float, bias: bool, activation: str = "gelu"):
        super().__init__()
        self.fc = nn.Linear(n_embd, hidden, bias=bias)
        self.act = ACTIVATIONS[activation]
        self.proj = nn.Linear(hidden, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(self.act(self.fc(x))))


class Block(nn.Module):
    """Transformer layer; `cross=True` adds encoder-decoder cross-attention (T5/Transformer decoder).

    `pre_norm=True` (GPT-2, T5): h = x + attn(norm(x)). `pre_norm=False` (original BERT):
    h = norm(x + attn(x)).
    """

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        dropout: float = 0.0,
        bias: bool = True,
        mlp_ratio: int = 4,
        rotary: Rotary | None = None,
        cross: bool = False,
        pre_norm: bool = True,
        norm_eps: float = 1e-5,
        activation: str = "gelu",
    ):
        super().__init__()
        self.pre_norm = pre_norm
        self.norm1 = nn.LayerNorm(n_embd, eps=norm_eps, bias=bias)
        self.attn = Attention(n_embd, n_head, dropout, bias, rotary)
        self.cross_norm = nn.LayerNorm(n_embd, eps=norm_eps, bias=bias) if cross else None
        self.cross_attn = Attention(n_embd, n_head, dropout, bias) if cross else None
        self.norm2 = nn.LayerNorm(n_embd, eps=norm_eps, bias=bias)
        self.mlp = MLP(n_embd, mlp_ratio * n_embd, dropout, bias, activation)

    def _sublayer(self, x, norm, fn):
        return x + fn(norm(x)) if self.pre_norm else norm(x + fn(x))

    def forward(self, x, causal=False, mask=None, memory=None, memory_mask=None,
                cache: LayerCache | None = None, positions: torch.Tensor | None = None):
        """`cache` / `positions`: decoding only (see `Attention.forward`); None = training."""
        self_cache = None if cache is None else cache.attn
        x = self._sublayer(x, self.norm1, lambda h: self.attn(h, causal=causal, mask=mask, cache=self_cache,
                                                              positions=positions))
        if self.cross_attn is not None:
            cross_cache = None if cache is None else cache.cross
            x = self._sublayer(x, self.cross_norm,
                               lambda h: self.cross_attn(h, kv=memory, mask=memory_mask, cache=cross_cache))
        return self._sublayer(x, self.norm2, self.mlp)
