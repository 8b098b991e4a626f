"""What an export reads: a network, the config dict that builds it and its tokenizer, from an
lmpretrain checkpoint (`.ckpt`) or from a `transformers` folder (config.json + safetensors).

`load_source` is also the way to use an exported or downloaded HF model as a distillation teacher:
`load_source(dir).network` is our `GPT` / `Encoder` with its weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from lmpretrain.errors import ConfigError


@dataclass
class Source:
    network: nn.Module  # GPT / Encoder / EncoderDecoder, with `task_head` when fine-tuned
    model: dict  # the plain config dict that builds it (`arch` included), as in checkpoints
    tokenizer_json: str | None
    module: nn.Module | None = None  # the LightningModule of a .ckpt (a task's forward needs it)
    path: Path | None = None

    @property
    def arch(self) -> str:
        return self.model.get("arch", "gpt")

    @property
    def kind(self) -> str:
        """causal_lm | masked_lm | seq2seq (the pretraining heads) or the task module's class name."""
        if self.module is not None and hasattr(self.network, "task_head"):
            return type(self.module).__name__
        return {"gpt": "causal_lm", "bert": "masked_lm", "t5": "seq2seq"}[self.arch]


def load_source(path: str | Path, key: str = "ckpt_path") -> Source:
    """A `.ckpt` written by lmpretrain, or a folder holding an HF GPT-2 / BERT (see `hf.load_hf`)."""
    path = Path(path).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        from lmpretrain.export.hf import load_hf

        return load_hf(path, key)
    if not path.exists():
        raise ConfigError(f"{key}={path} does not exist; pass a .ckpt from logs/<run>/.../checkpoints/ or a "
                          f"folder with an HF model (config.json + model.safetensors)")
    from lmpretrain.checkpoints import load_module

    module = load_module(path, key).eval()  # weights_only=True; a folder gets its own message
    network = getattr(module, "network", None)
    model = dict((module.hparams or {}).get("model") or {})
    if network is None or not model:
        raise ConfigError(f"{key}={path} holds no network config; pass a checkpoint written by lmpretrain.train "
                          f"or lmpretrain.finetune")
    model.setdefault("arch", "gpt")
    return Source(network.eval(), model, module.tokenizer_json, module, path)
