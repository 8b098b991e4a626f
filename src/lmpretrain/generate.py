"""`python -m lmpretrain.generate ckpt_path=... prompt="..."`: sample text from a checkpoint.

The checkpoint carries the tokenizer, so nothing else is needed.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from tokenizers import Tokenizer

from lmpretrain.config import CONF_DIR
from lmpretrain.errors import ConfigError, exit_on_user_error
from lmpretrain.objectives import CausalLMModule


def load_for_generation(ckpt_path: str | Path) -> tuple[CausalLMModule, Tokenizer]:
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise ConfigError(f"ckpt_path={path} does not exist; pass a .ckpt from logs/<task>/.../checkpoints/")
    module = CausalLMModule.load_from_checkpoint(path, map_location="cpu", weights_only=False)
    if module.tokenizer_json is None:
        raise ConfigError(f"{path} holds no tokenizer; it was not written by lmpretrain.train")
    return module.eval(), Tokenizer.from_str(module.tokenizer_json)


def generate_text(
    ckpt_path: str | Path,
    prompt: str,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = 200,
    num_samples: int = 1,
    seed: int = 1337,
) -> list[str]:
    """Prompt + continuation, `num_samples` times. temperature=0 decodes greedily."""
    module, tokenizer = load_for_generation(ckpt_path)
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    if not ids:
        raise ConfigError("prompt encodes to no tokens; give a non-empty prompt, e.g. prompt='ROMEO:'")
    idx = torch.tensor([ids] * num_samples, dtype=torch.long)
    out = module.generate(idx, max_new_tokens, temperature, top_k, torch.Generator().manual_seed(seed))
    return [tokenizer.decode(row.tolist(), skip_special_tokens=False) for row in out]


@hydra.main(config_path=str(CONF_DIR), config_name="generate", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    samples = generate_text(
        cfg.ckpt_path, cfg.prompt, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.num_samples, cfg.seed
    )
    for i, text in enumerate(samples):
        if i:
            print("-" * 40)
        print(text)


if __name__ == "__main__":
    main()
