"""Weights between `transformers` BERT / GPT-2 and our `Encoder` / `GPT`, both directions.

Each port is a table of (our names, HF names, layout) rows: the tensors of one row, put in
PyTorch's (out, in) layout and concatenated along dim 0, are the same on both sides. That covers
the renames and GPT-2's fused `c_attn` vs our separate `q`, `k`, `v`. The third field says how the HF
side is laid out: `CONV1D` marks GPT-2's Conv1D weights, stored (in, out); `SWAPPED` marks BERT's
next-sentence head (`cls.seq_relationship` -> our `pair_head`), whose two classes come in the other
order (HF: 0 = B continues A; ours, as the data module labels pairs: 1 = B continues A), so its rows
are exchanged. `transformers` itself is not imported here: the functions take a model object (or its
config and state dict), so this module costs nothing for users who never port.
"""

from __future__ import annotations

import torch
from torch import nn

from lmpretrain.errors import ConfigError
from lmpretrain.models.encoder import Encoder, EncoderConfig
from lmpretrain.models.gpt import GPT, GPTConfig

CONV1D, SWAPPED = "conv1d", "swapped"  # how a row's HF tensors differ from ours (None: not at all)
Row = tuple[list[str], list[str], str | None]
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}


def _linear(ours: str, hf: str, layout: str | None = None) -> list[Row]:
    return [([f"{ours}.weight"], [f"{hf}.weight"], layout), ([f"{ours}.bias"], [f"{hf}.bias"], layout)]


def bert_rows(n_layer: int, prefix: str = "bert.", pooler: bool = True, pair_head: bool = True) -> list[Row]:
    """pooler, pair_head: map the pooler and the NSP head too (`BertForPreTraining` has both,
    `BertForMaskedLM` neither)."""
    rows: list[Row] = [
        (["tok_emb.weight"], [f"{prefix}embeddings.word_embeddings.weight"], None),
        (["pos_emb.weight"], [f"{prefix}embeddings.position_embeddings.weight"], None),
        (["seg_emb.weight"], [f"{prefix}embeddings.token_type_embeddings.weight"], None),
        *_linear("emb_norm", f"{prefix}embeddings.LayerNorm"),
        *(_linear("pooler", f"{prefix}pooler.dense") if pooler else []),
        *_linear("mlm_head.dense", "cls.predictions.transform.dense"),
        *_linear("mlm_head.norm", "cls.predictions.transform.LayerNorm"),
        (["mlm_head.bias"], ["cls.predictions.bias"], None),
        (["mlm_head.decoder.weight"], ["cls.predictions.decoder.weight"], None),
        *(_linear("pair_head", "cls.seq_relationship", SWAPPED) if pair_head else []),
    ]
    for i in range(n_layer):
        ours, hf = f"blocks.{i}", f"{prefix}encoder.layer.{i}"
        rows += [
            *_linear(f"{ours}.attn.q", f"{hf}.attention.self.query"),
            *_linear(f"{ours}.attn.k", f"{hf}.attention.self.key"),
            *_linear(f"{ours}.attn.v", f"{hf}.attention.self.value"),
            *_linear(f"{ours}.attn.proj", f"{hf}.attention.output.dense"),
            *_linear(f"{ours}.norm1", f"{hf}.attention.output.LayerNorm"),
            *_linear(f"{ours}.mlp.fc", f"{hf}.intermediate.dense"),
            *_linear(f"{ours}.mlp.proj", f"{hf}.output.dense"),
            *_linear(f"{ours}.norm2", f"{hf}.output.LayerNorm"),
        ]
    return rows


def gpt2_rows(n_layer: int, prefix: str = "transformer.") -> list[Row]:
    rows: list[Row] = [
        (["tok_emb.weight"], [f"{prefix}wte.weight"], None),
        (["pos_emb.weight"], [f"{prefix}wpe.weight"], None),
        *_linear("norm", f"{prefix}ln_f"),
        (["lm_head.weight"], ["lm_head.weight"], None),
    ]
    for i in range(n_layer):
        ours, hf = f"blocks.{i}", f"{prefix}h.{i}"
        rows += [
            *_linear(f"{ours}.norm1", f"{hf}.ln_1"),
            ([f"{ours}.attn.{n}.weight" for n in "qkv"], [f"{hf}.attn.c_attn.weight"], CONV1D),
            ([f"{ours}.attn.{n}.bias" for n in "qkv"], [f"{hf}.attn.c_attn.bias"], CONV1D),
            *_linear(f"{ours}.attn.proj", f"{hf}.attn.c_proj", CONV1D),
            *_linear(f"{ours}.norm2", f"{hf}.ln_2"),
            *_linear(f"{ours}.mlp.fc", f"{hf}.mlp.c_fc", CONV1D),
            *_linear(f"{ours}.mlp.proj", f"{hf}.mlp.c_proj", CONV1D),
        ]
    return rows


def _layout(t: torch.Tensor, layout: str | None) -> torch.Tensor:
    """An HF tensor <-> ours: Conv1D (in, out) <-> Linear (out, in), or the two classes exchanged;
    each is its own inverse."""
    if layout == CONV1D:
        return t.t() if t.ndim == 2 else t
    if layout == SWAPPED:
        return t.flip(0)
    return t


def transfer(rows: list[Row], src: dict, dst: dict, to_ours: bool) -> dict:
    """Fill a copy of state dict `dst` from `src` along `rows` (HF -> ours when to_ours)."""
    out = dict(dst)
    for ours, hf, layout in rows:
        src_names, dst_names = (hf, ours) if to_ours else (ours, hf)
        src_layout, dst_layout = (layout, None) if to_ours else (None, layout)
        missing = [n for n in src_names if n not in src] + [n for n in dst_names if n not in dst]
        if missing:
            raise KeyError(f"state dict has no {missing}; is this the right architecture?")
        flat = torch.cat([_layout(src[n], src_layout) for n in src_names])  # (sum of out, ...)
        sizes = [_layout(dst[n], dst_layout).shape[0] for n in dst_names]
        for name, part in zip(dst_names, flat.split(sizes)):
            value = _layout(part, dst_layout)
            if value.shape != dst[name].shape:
                raise ValueError(f"{name}: shape {tuple(value.shape)} from the source, {tuple(dst[name].shape)} expected")
            out[name] = value.clone().to(dst[name].dtype)
    return out


def _mlp_ratio(hidden: int, inner: int) -> int:
    if inner % hidden:
        raise ConfigError(f"intermediate size {inner} is not a multiple of hidden size {hidden}; cannot port")
    return inner // hidden


def _activation(name: str) -> str:
    if name not in HF_ACTIVATIONS:
        raise ConfigError(f"activation {name!r} has no counterpart here; use one of {sorted(HF_ACTIVATIONS)}")
    return HF_ACTIVATIONS[name]


def encoder_config_from_hf(hf) -> EncoderConfig:
    """A `transformers.BertConfig` -> EncoderConfig (post-norm, learned positions)."""
    if getattr(hf, "position_embedding_type", "absolute") != "absolute":
        raise ConfigError("only BERT with absolute position embeddings can be ported")
    return EncoderConfig(
        vocab_size=hf.vocab_size, block_size=hf.max_position_embeddings, n_layer=hf.num_hidden_layers,
        n_head=hf.num_attention_heads, n_embd=hf.hidden_size,
        mlp_ratio=_mlp_ratio(hf.hidden_size, hf.intermediate_size), dropout=hf.hidden_dropout_prob,
        type_vocab_size=hf.type_vocab_size, pre_norm=False, norm_eps=hf.layer_norm_eps,
        activation=_activation(hf.hidden_act), tie_embeddings=getattr(hf, "tie_word_embeddings", True),
    )


def gpt_config_from_hf(hf) -> GPTConfig:
    """A `transformers.GPT2Config` -> GPTConfig."""
    if abs(hf.layer_norm_epsilon - 1e-5) > 1e-12:
        raise ConfigError(f"GPT uses LayerNorm eps 1e-5; this GPT-2 has {hf.layer_norm_epsilon}")
    return GPTConfig(
        vocab_size=hf.vocab_size, block_size=hf.n_positions, n_layer=hf.n_layer, n_head=hf.n_head,
        n_embd=hf.n_embd, dropout=hf.resid_pdrop, bias=True,
        mlp_ratio=_mlp_ratio(hf.n_embd, hf.n_inner or 4 * hf.n_embd), position="learned",
        tie_embeddings=getattr(hf, "tie_word_embeddings", True), activation=_activation(hf.activation_function),
    )


def _prefix(state: dict, prefix: str) -> str:
    return prefix if any(k.startswith(prefix) for k in state) else ""


def _bert_rows_for(n_layer: int, hf_state: dict) -> list[Row]:
    """The rows for what this HF BERT holds; our pooler / pair_head keep their own initialisation
    when it has none (and are not exported)."""
    prefix = _prefix(hf_state, "bert.")
    return bert_rows(n_layer, prefix, pooler=f"{prefix}pooler.dense.weight" in hf_state,
                     pair_head="cls.seq_relationship.weight" in hf_state)


def _load(net: nn.Module, rows: list[Row], hf_state: dict) -> nn.Module:
    net.load_state_dict(transfer(rows, hf_state, net.state_dict(), to_ours=True), strict=True)
    return net


def bert_from_hf(hf_model) -> Encoder:
    """Our Encoder with the weights of a `BertForPreTraining` / `BertForMaskedLM`."""
    state = hf_model.state_dict()
    net = Encoder(encoder_config_from_hf(hf_model.config))
    return _load(net, _bert_rows_for(net.config.n_layer, state), state)


def gpt2_from_hf(hf_model) -> GPT:
    """Our GPT with the weights of a `GPT2LMHeadModel`."""
    state = hf_model.state_dict()
    net = GPT(gpt_config_from_hf(hf_model.config))
    return _load(net, gpt2_rows(net.config.n_layer, _prefix(state, "transformer.")), state)


def bert_to_hf(net: Encoder, hf_model) -> None:
    """Copy our Encoder's weights into a same-shaped `BertForPreTraining` / `BertForMaskedLM`."""
    state = hf_model.state_dict()
    rows = _bert_rows_for(net.config.n_layer, state)
    hf_model.load_state_dict(transfer(rows, net.state_dict(), state, to_ours=False), strict=False)


def gpt2_to_hf(net: GPT, hf_model) -> None:
    """Copy our GPT's weights into a same-shaped `GPT2LMHeadModel`."""
    state = hf_model.state_dict()
    rows = gpt2_rows(net.config.n_layer, _prefix(state, "transformer."))
    hf_model.load_state_dict(transfer(rows, net.state_dict(), state, to_ours=False), strict=False)
