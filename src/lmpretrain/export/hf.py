"""Our GPT / Encoder <-> a `transformers` folder (config.json, model.safetensors, tokenizer.json).

Export writes GPT as `GPT2LMHeadModel` and the encoder as `BertForPreTraining` (the MLM head, the
pooler and the NSP/SOP head: `AutoModelForMaskedLM` and `AutoModel` load their parts of it), so
`AutoModel*.from_pretrained(dir)` and `PreTrainedTokenizerFast(tokenizer_file=dir/tokenizer.json)`
work. The weight tables are `models/hf_port.py`'s; this module adds the configs, the checks of what
the HF layouts cannot represent, and the files. Import reads safetensors only (never a pickle).

The encoder-decoder is not exported: T5 has a bucketed relative-position bias in attention, RMSNorm
without mean-centering and no attention scaling, where ours has rotary/absolute positions and
LayerNorm (README, "Compression and export").
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from tokenizers import Tokenizer

from lmpretrain.errors import ConfigError
from lmpretrain.export.source import Source
from lmpretrain.models import GPT, Encoder, EncoderConfig, GPTConfig
from lmpretrain.models.hf_port import (
    bert_rows,
    encoder_config_from_hf,
    gpt2_rows,
    gpt_config_from_hf,
    transfer,
)

# Our activation -> the name transformers gives the same function.
TO_HF_ACTIVATION = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}
# tokenizer_config.json roles of the special tokens conf/tokenizer/ uses.
SPECIAL_ROLES = {"<|endoftext|>": ("eos_token", "bos_token"), "<unk>": ("unk_token",), "[UNK]": ("unk_token",),
                 "[PAD]": ("pad_token",), "[CLS]": ("cls_token",), "[SEP]": ("sep_token",),
                 "[MASK]": ("mask_token",)}


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError("HF export/import needs transformers; pip install 'lmpretrain[export]'") from None
    return transformers


def _unsupported(net, layout: str, checks: list[tuple[bool, str]]) -> None:
    problems = [msg for bad, msg in checks if bad]
    if problems:
        raise ConfigError(f"cannot export this {type(net).__name__} as {layout}: {'; '.join(problems)}; "
                          f"export it to ONNX instead (to=onnx) or train with the HF-compatible settings")


def gpt2_config(c: GPTConfig, tokenizer: Tokenizer | None):
    """The GPT2Config of a GPT, or one ConfigError naming every feature GPT-2 cannot represent."""
    _unsupported(GPT, "GPT-2", [
        (c.position != "learned", f"model.position={c.position} (GPT-2 has learned absolute positions only)"),
        (not c.bias, "model.bias=false (GPT-2's Linear layers and LayerNorms all have biases)"),
    ])
    eos = tokenizer.token_to_id("<|endoftext|>") if tokenizer is not None else None
    return _transformers().GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head,
        n_inner=c.mlp_ratio * c.n_embd, activation_function=TO_HF_ACTIVATION[c.activation],
        resid_pdrop=c.dropout, embd_pdrop=c.dropout, attn_pdrop=c.dropout, layer_norm_epsilon=1e-5,
        tie_word_embeddings=c.tie_embeddings, bos_token_id=eos, eos_token_id=eos,
        architectures=["GPT2LMHeadModel"],
    )


def bert_config(c: EncoderConfig, tokenizer: Tokenizer | None):
    """The BertConfig of an Encoder, or one ConfigError naming every feature BERT cannot represent.
    No segment embedding (type_vocab_size=0) is exported as one all-zero segment row: the same sums."""
    _unsupported(Encoder, "BERT", [
        (c.pre_norm, "model.pre_norm=true (BERT normalizes after each sublayer)"),
        (c.position != "learned", f"model.position={c.position} (BERT has learned absolute positions only)"),
        (not c.bias, "model.bias=false (BERT's Linear layers and LayerNorms all have biases)"),
    ])
    pad = tokenizer.token_to_id("[PAD]") if tokenizer is not None else None
    return _transformers().BertConfig(
        vocab_size=c.vocab_size, hidden_size=c.n_embd, num_hidden_layers=c.n_layer, num_attention_heads=c.n_head,
        intermediate_size=c.mlp_ratio * c.n_embd, hidden_act=TO_HF_ACTIVATION[c.activation],
        hidden_dropout_prob=c.dropout, attention_probs_dropout_prob=c.dropout,
        max_position_embeddings=c.block_size, type_vocab_size=max(c.type_vocab_size, 1),
        layer_norm_eps=c.norm_eps, tie_word_embeddings=c.tie_embeddings, pad_token_id=pad or 0,
        architectures=["BertForPreTraining"],
    )


def save_hf(src: Source, out: Path) -> dict:
    """Write `src` as an HF model folder; returns what was written (and what was left out)."""
    transformers = _transformers()
    net = src.network
    tokenizer = Tokenizer.from_str(src.tokenizer_json) if src.tokenizer_json else None
    ours = {k: v for k, v in net.state_dict().items() if not k.startswith("task_head.")}
    if isinstance(net, GPT):
        hf = transformers.GPT2LMHeadModel(gpt2_config(net.config, tokenizer))
        rows = gpt2_rows(net.config.n_layer)
    elif isinstance(net, Encoder):
        hf = transformers.BertForPreTraining(bert_config(net.config, tokenizer))
        rows = bert_rows(net.config.n_layer)
        if net.seg_emb is None:
            ours["seg_emb.weight"] = torch.zeros(1, net.config.n_embd)
    else:
        raise ConfigError(f"HF export covers GPT (-> GPT-2) and the BERT-like encoder; a {type(net).__name__} "
                          f"differs from T5 (positions, norms; see README) -- export it with to=onnx")
    hf.load_state_dict(transfer(rows, ours, hf.state_dict(), to_ours=False), strict=True)
    hf.eval().save_pretrained(out, safe_serialization=True)
    files = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    if tokenizer is not None:
        files += save_tokenizer(tokenizer, out, net.config.block_size)
    left_out = ["task_head (HF's classification heads differ: BERT's reads the tanh pooler, ours the raw [CLS])"
                if hasattr(net, "task_head") else None]
    return {"format": "hf", "architecture": hf.config.architectures[0], "files": files,
            "left_out": [x for x in left_out if x]}


def save_tokenizer(tokenizer: Tokenizer, out: Path, max_length: int) -> list[str]:
    """tokenizer.json plus a tokenizer_config.json naming the special tokens, so both
    `PreTrainedTokenizerFast(tokenizer_file=...)` and `AutoTokenizer.from_pretrained(dir)` load it."""
    tokenizer.save(str(out / "tokenizer.json"))
    config: dict = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length}
    for token, roles in SPECIAL_ROLES.items():
        if tokenizer.token_to_id(token) is not None:
            for role in roles:
                config.setdefault(role, token)
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return ["tokenizer.json", "tokenizer_config.json"]


def read_safetensors(folder: Path, key: str) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's model.safetensors (or its shards); never a pickle."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickled = [p.name for p in folder.glob("*.bin")]
        hint = (f"it holds only pickle weights ({pickled[0]}), which are never loaded here; re-save it with "
                f"model.save_pretrained(dir, safe_serialization=True)" if pickled else "it has no weights")
        raise ConfigError(f"{key}={folder} has no .safetensors file: {hint}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def _prefixed(state: dict, prefix: str) -> str:
    return prefix if any(k.startswith(prefix) for k in state) else ""


def load_hf(folder: Path, key: str = "ckpt_path") -> Source:
    """An HF GPT-2 / BERT folder -> our network with its weights (and its tokenizer.json, if any).

    Works for what `save_hf` writes and for transformers' own GPT2LMHeadModel / GPT2Model /
    BertForPreTraining / BertForMaskedLM / BertModel folders; heads the folder lacks (a BertModel
    has no MLM head) keep our initialisation and are named in `Source.model['_left_at_init']`.
    """
    transformers = _transformers()
    hf_cfg = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    state = read_safetensors(folder, key)
    if hf_cfg.model_type == "gpt2":
        config, arch = gpt_config_from_hf(hf_cfg), "gpt"
        net: torch.nn.Module = GPT(config)
        prefix = _prefixed(state, "transformer.")
        rows = gpt2_rows(config.n_layer, prefix)
        tied = {"lm_head.weight": f"{prefix}wte.weight"}
    elif hf_cfg.model_type == "bert":
        config, arch = encoder_config_from_hf(hf_cfg), "bert"
        net = Encoder(config)
        prefix = _prefixed(state, "bert.")
        rows = bert_rows(config.n_layer, prefix)
        tied = {"cls.predictions.decoder.weight": f"{prefix}embeddings.word_embeddings.weight"}
    else:
        raise ConfigError(f"{key}={folder} holds a {hf_cfg.model_type!r} model; import covers gpt2 and bert")
    for name, source in tied.items():  # transformers leaves tied copies out of the file
        if name not in state and getattr(hf_cfg, "tie_word_embeddings", True) and source in state:
            state[name] = state[source]
    present = [r for r in rows if all(n in state for n in r[1])]
    absent = [n for r in rows if r not in present for n in r[0]]
    if missing_body := [n for n in absent if n.startswith(("blocks.", "tok_emb", "pos_emb"))]:
        raise ConfigError(f"{key}={folder}: its weights lack {missing_body[:3]}; is it a {hf_cfg.model_type} "
                          f"checkpoint saved by transformers?")
    try:
        net.load_state_dict(transfer(present, state, net.state_dict(), to_ours=True), strict=True)
    except (KeyError, ValueError) as e:
        raise ConfigError(f"{key}={folder}: the weights do not fit its config.json ({e})") from None
    tok_file = folder / "tokenizer.json"
    tokenizer_json = Tokenizer.from_file(str(tok_file)).to_str() if tok_file.is_file() else None
    model = {"arch": arch, **asdict(config)}
    if absent:
        model["_left_at_init"] = absent
    return Source(net.eval(), model, tokenizer_json, None, folder)


def write_checkpoint(src: Source, path: Path, network: torch.nn.Module | None = None) -> dict:
    """A single-file lmpretrain checkpoint of `src` with `network`'s weights (default: its own):
    `pretrained=` for finetune, `ckpt_path=` for generate/evaluate/export. A checkpoint source keeps
    its module class (a fine-tuned task stays one); an HF folder becomes its pretraining module."""
    import importlib

    import lightning

    from lmpretrain.atomic import atomic_torch_save
    from lmpretrain.checkpoints import DEFAULT_MODULES

    if src.tokenizer_json is None:
        raise ConfigError(f"{src.path} has no tokenizer.json; fine-tuning and generation need one next to the "
                          f"weights (copy the model's tokenizer.json into the folder)")
    network = src.network if network is None else network
    if src.module is not None:
        module = src.module
        module_name = f"{type(module).__module__}.{type(module).__qualname__}"
    else:
        model = {k: v for k, v in src.model.items() if not k.startswith("_")}
        module_name = DEFAULT_MODULES[model["arch"]]
        module_path, _, cls_name = module_name.rpartition(".")
        module = getattr(importlib.import_module(module_path), cls_name)(model=model)
    original = module.network
    module.network = network
    try:
        state = module.state_dict()
    finally:
        module.network = original
    ckpt = {"state_dict": state, "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": lightning.__version__, "tokenizer_json": src.tokenizer_json,
            "lmpretrain_module": module_name}
    atomic_torch_save(ckpt, path)
    return {"file": path.name, "module": module_name, "left_at_init": src.model.get("_left_at_init", [])}
