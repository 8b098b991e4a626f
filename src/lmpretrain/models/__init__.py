"""Plain `nn.Module` networks and the registry that builds one from a config dict."""

from __future__ import annotations

from torch import nn

from lmpretrain.errors import ConfigError
from lmpretrain.models.encdec import EncoderDecoder, EncoderDecoderConfig
from lmpretrain.models.encoder import Encoder, EncoderConfig
from lmpretrain.models.gpt import GPT, GPTConfig

ARCHITECTURES: dict[str, tuple[type[nn.Module], type]] = {
    "gpt": (GPT, GPTConfig),  # decoder-only
    "bert": (Encoder, EncoderConfig),  # bidirectional encoder
    "t5": (EncoderDecoder, EncoderDecoderConfig),  # encoder-decoder
}


def model_config(model: dict):
    """The typed config for the plain dict of `conf/model/*.yaml` (`arch` picks the class).

    Raises ConfigError for unknown keys or values that cannot work, before anything is built.
    """
    cfg = dict(model)
    arch = cfg.pop("arch", "gpt")
    if arch not in ARCHITECTURES:
        raise ConfigError(f"model.arch={arch!r} is unknown; use one of {sorted(ARCHITECTURES)}")
    cfg_cls = ARCHITECTURES[arch][1]
    fields = set(cfg_cls.__dataclass_fields__)
    if unknown := sorted(set(cfg) - fields):
        raise ConfigError(f"model has unknown key(s) {unknown} for arch={arch}; valid keys: {sorted(fields)}")
    return cfg_cls(**cfg)


def build_network(model: dict) -> nn.Module:
    return ARCHITECTURES[model.get("arch", "gpt")][0](model_config(model))


__all__ = [
    "ARCHITECTURES",
    "GPT",
    "Encoder",
    "EncoderConfig",
    "EncoderDecoder",
    "EncoderDecoderConfig",
    "GPTConfig",
    "build_network",
    "model_config",
]
