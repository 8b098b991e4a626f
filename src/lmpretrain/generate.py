"""`python -m lmpretrain.generate ckpt_path=... prompt="..."`: continue a prompt with a checkpoint
(sampling, greedy or beam search; `models/generation.py` does the decoding, with a KV cache).

The checkpoint carries the tokenizer, so nothing else is needed.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from tokenizers import Tokenizer

from lmpretrain.checkpoints import load_module
from lmpretrain.config import CONF_DIR
from lmpretrain.errors import ConfigError, exit_on_user_error
from lmpretrain.models.generation import STRATEGIES
from lmpretrain.objectives import CausalLMModule


def load_for_generation(ckpt_path: str | Path) -> tuple[CausalLMModule, Tokenizer]:
    path = Path(ckpt_path).expanduser()
    if not path.exists():  # a folder (a sharded checkpoint) gets its own message from load_module
        raise ConfigError(f"ckpt_path={path} does not exist; pass a .ckpt from logs/<task>/.../checkpoints/")
    module = load_module(path, "ckpt_path")  # weights_only=True: a crafted file cannot run code
    if not isinstance(module, CausalLMModule):
        raise ConfigError(f"ckpt_path={path} holds a {type(module).__name__}, not a causal LM; generate needs a "
                          f"checkpoint of objective=causal_lm (score others with python -m lmpretrain.evaluate)")
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
    *,
    top_p: float | None = None,
    decoding: str = "sample",
    num_beams: int = 4,
    length_penalty: float = 1.0,
    eos_token: str | None = None,
    use_cache: bool = True,
) -> list[str]:
    """Prompt + continuation, `num_samples` times.

    decoding: sample (temperature, top_k, top_p; temperature=0 decodes greedily) | greedy | beam
    (num_beams, length_penalty). `eos_token` (e.g. "<|endoftext|>") ends a sample early.
    """
    if decoding not in STRATEGIES:
        raise ConfigError(f"decoding={decoding!r} must be one of {list(STRATEGIES)}")
    problems = [msg for bad, msg in [
        (top_p is not None and not 0.0 < top_p <= 1.0, f"top_p={top_p} must be in (0, 1] (null = off)"),
        (top_k is not None and top_k < 1, f"top_k={top_k} must be >= 1 (null = off)"),
        (temperature < 0, f"temperature={temperature} must be >= 0"),
        (num_beams < 1, f"num_beams={num_beams} must be >= 1"),
        (max_new_tokens < 0, f"max_new_tokens={max_new_tokens} must be >= 0"),
    ] if bad]
    if problems:
        raise ConfigError("; ".join(problems))
    module, tokenizer = load_for_generation(ckpt_path)
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    if not ids:
        raise ConfigError("prompt encodes to no tokens; give a non-empty prompt, e.g. prompt='ROMEO:'")
    eos_id = None
    if eos_token is not None and (eos_id := tokenizer.token_to_id(eos_token)) is None:
        raise ConfigError(f"eos_token={eos_token!r} is not in the checkpoint's tokenizer; null turns it off")
    idx = torch.tensor([ids] * num_samples, dtype=torch.long)
    out = module.generate(idx, max_new_tokens, temperature, top_k, torch.Generator().manual_seed(seed),
                          top_p=top_p, strategy=decoding, num_beams=num_beams, length_penalty=length_penalty,
                          eos_id=eos_id, pad_id=eos_id or 0, use_cache=use_cache)
    texts = []
    for row in out.tolist():
        if eos_id is not None and eos_id in row[len(ids) :]:  # cut after the (first new) EOS
            row = row[: row.index(eos_id, len(ids)) + 1]
        texts.append(tokenizer.decode(row, skip_special_tokens=False))
    return texts


@hydra.main(config_path=str(CONF_DIR), config_name="generate", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    samples = generate_text(
        cfg.ckpt_path, cfg.prompt, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.num_samples, cfg.seed,
        top_p=cfg.top_p, decoding=cfg.decoding, num_beams=cfg.num_beams, length_penalty=cfg.length_penalty,
        eos_token=cfg.eos_token, use_cache=cfg.use_cache,
    )
    for i, text in enumerate(samples):
        if i:
            print("-" * 40)
        print(text)


if __name__ == "__main__":
    main()
