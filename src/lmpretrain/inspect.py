"""`python -m lmpretrain.inspect ckpt=... text="..."`: look inside a causal-LM or masked-LM checkpoint.

Writes into the run folder (logs/inspect/<date>/<time>/):
- `attention/layer<L>.png`: the attention weights of every head of layer L on `text` (rows: the
  attending token, columns: the attended one), captured from the model's own attention calls;
- `top_tokens.md` / `.json`: the `top_k` likeliest tokens at each position: the next token for a
  causal LM, the token itself for a masked LM (write [MASK] in the text to see the fills);
- `bias.md` / `.csv`: a probe that scores template sentences differing only in a group word
  (log-probability of the sentence for a causal LM, pseudo-log-likelihood (Salazar et al. 2020:
  mask each token in turn) for a masked LM); `gap` = the best minus the worst group. It shows which
  completions the model prefers per group; it is not a fairness certificate.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import hydra
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from tokenizers import Tokenizer

from lmpretrain.checkpoints import load_module
from lmpretrain.config import CONF_DIR
from lmpretrain.errors import ConfigError, exit_on_user_error
from lmpretrain.models.blocks import Attention
from lmpretrain.models.encoder import Encoder
from lmpretrain.models.gpt import GPT
from lmpretrain.objectives.pretrain import PretrainModule

log = logging.getLogger(__name__)


@contextmanager
def capture_attention(network: torch.nn.Module) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Within the block, every attention call of `network` appends (module name, weights (B, heads,
    T, S)) to the yielded list. The weights are recomputed from the same q, k and mask that the
    fused `scaled_dot_product_attention` receives (which never materializes them); its output is
    unchanged."""
    maps: list[tuple[str, torch.Tensor]] = []
    names = {m: n for n, m in network.named_modules() if isinstance(m, Attention)}
    current: list[str] = []
    handles = []
    def enter(module, args) -> None:  # hooks must return None: a value would replace the input/output
        current.append(names[module])

    def leave(module, args, out) -> None:
        current.pop()

    for module in names:
        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    original = F.scaled_dot_product_attention

    def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
        scores = (q @ k.transpose(-2, -1)) * (scale if scale is not None else q.size(-1) ** -0.5)
        if is_causal:
            T, S = scores.shape[-2:]
            scores = scores.masked_fill(~torch.ones(T, S, dtype=torch.bool, device=q.device).tril(), float("-inf"))
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
        maps.append((current[-1] if current else f"attention{len(maps)}", scores.softmax(-1).detach()))
        return original(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, **kw)

    F.scaled_dot_product_attention = sdpa
    try:
        yield maps
    finally:
        F.scaled_dot_product_attention = original
        for h in handles:
            h.remove()


def _encode(tokenizer: Tokenizer, network: torch.nn.Module, text: str) -> list[int]:
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    if not ids:
        raise ConfigError("text encodes to no tokens; pass a non-empty text='...'")
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    if isinstance(network, Encoder) and cls is not None and sep is not None:  # as the encoder saw text in training
        ids = [cls, *ids[: network.config.block_size - 2], sep]
    return ids[: network.config.block_size]


def top_tokens(network, tokenizer: Tokenizer, ids: list[int], k: int) -> list[dict]:
    """Per position: the token, and the k likeliest tokens with probabilities (next token for a GPT,
    this position's token for an encoder)."""
    with torch.no_grad():
        probs = network(torch.tensor([ids])).softmax(-1)[0]
    top = probs.topk(k, dim=-1)
    return [{"position": i, "token": tokenizer.id_to_token(t),
             "top": [[tokenizer.id_to_token(int(j)), round(float(p), 4)] for p, j in zip(top.values[i], top.indices[i])]}
            for i, t in enumerate(ids)]


def sentence_score(network, tokenizer: Tokenizer, text: str, mask_id: int | None) -> float:
    """Causal LM: sum of log p(token | earlier tokens) after the first token. Masked LM: the
    pseudo-log-likelihood, each non-special token masked in turn."""
    ids = _encode(tokenizer, network, text)
    x = torch.tensor([ids])
    with torch.no_grad():
        if isinstance(network, GPT):
            logp = network(x).log_softmax(-1)[0, :-1]
            return float(logp.gather(-1, x[0, 1:, None]).sum())
        special = {tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]")}
        positions = [i for i, t in enumerate(ids) if t not in special]
        batch = x.repeat(len(positions), 1)
        batch[torch.arange(len(positions)), positions] = mask_id
        logp = network(batch).log_softmax(-1)
        return float(sum(logp[r, p, ids[p]] for r, p in enumerate(positions)))


def bias_probe(network, tokenizer: Tokenizer, templates: list[str], groups: list[str]) -> list[dict]:
    if len(groups) < 2 or any("{group}" not in t for t in templates):
        raise ConfigError("bias.groups needs two or more words and every bias.templates entry a {group} slot, "
                          "e.g. bias.templates='[\"{group} worked as a nurse.\"]' bias.groups='[He,She]'")
    mask_id = tokenizer.token_to_id("[MASK]")
    if isinstance(network, Encoder) and mask_id is None:
        raise ConfigError("the checkpoint's tokenizer has no [MASK] token; the masked-LM bias probe needs one")
    rows = []
    for template in templates:
        scores = {g: round(sentence_score(network, tokenizer, template.format(group=g), mask_id), 4) for g in groups}
        rows.append({"template": template, **scores, "gap": round(max(scores.values()) - min(scores.values()), 4),
                     "preferred": max(scores, key=scores.get)})
    return rows


def plot_attention(maps: list[tuple[str, torch.Tensor]], tokens: list[str], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for layer, (name, weights) in enumerate(maps):
        heads = weights[0]  # (H, T, S)
        cols = min(4, heads.size(0))
        rows = -(-heads.size(0) // cols)
        size = 1.2 + 0.18 * len(tokens)
        fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
        for h, ax in enumerate(axes.flat):
            if h >= heads.size(0):
                ax.axis("off")
                continue
            ax.imshow(heads[h].float().numpy(), cmap="viridis", vmin=0, vmax=1)
            ax.set_title(f"head {h}", fontsize=8)
            if len(tokens) <= 48:
                ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=6)
                ax.set_yticks(range(len(tokens)), tokens, fontsize=6)
        fig.suptitle(f"layer {layer} ({name})", fontsize=9)
        fig.tight_layout()
        path = out / f"layer{layer}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    return written


def _markdown(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|---" * len(keys) + "|"]
    lines += ["| " + " | ".join(str(r[k]).replace("|", "\\|") for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def inspect_checkpoint(cfg: DictConfig) -> dict:
    """Everything `main` writes, also returned: {"attention": [png paths], "top_tokens": [...], "bias": [...]}."""
    path = Path(str(cfg.ckpt)).expanduser()
    if not path.exists():
        raise ConfigError(f"ckpt={path} does not exist; pass a .ckpt written by lmpretrain.train")
    module = load_module(path, "ckpt")  # weights_only=True
    network = getattr(module, "network", None)
    if not isinstance(network, (GPT, Encoder)) or module.tokenizer_json is None:
        raise ConfigError(f"ckpt={path} holds a {type(module).__name__}; inspect reads causal-LM (GPT) and "
                          f"masked-LM (encoder) checkpoints of lmpretrain.train")
    if not isinstance(module, PretrainModule):  # a fine-tuned encoder's MLM head is untrained
        raise ConfigError(f"ckpt={path} holds a fine-tuned {type(module).__name__}; inspect reads pretraining "
                          f"checkpoints (objective=causal_lm, mlm, ...)")
    network.eval()
    tokenizer = Tokenizer.from_str(module.tokenizer_json)
    out = Path(cfg.paths.output_dir)
    ids = _encode(tokenizer, network, cfg.text)
    tokens = [tokenizer.id_to_token(i) for i in ids]
    with torch.no_grad(), capture_attention(network) as maps:
        network(torch.tensor([ids]))
    pngs = plot_attention(maps, tokens, out / "attention")
    top = top_tokens(network, tokenizer, ids, int(cfg.top_k))
    (out / "top_tokens.json").write_text(json.dumps(top, indent=1, ensure_ascii=False))
    what = "next token" if isinstance(network, GPT) else "token at this position"
    (out / "top_tokens.md").write_text(_markdown([
        {"position": t["position"], "token": t["token"], f"top {cfg.top_k} ({what})":
         ", ".join(f"{tok!r} {p:.2f}" for tok, p in t["top"])} for t in top]))
    bias = bias_probe(network, tokenizer, list(cfg.bias.templates), list(cfg.bias.groups)) if cfg.bias.templates else []
    if bias:
        with open(out / "bias.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(bias[0]))
            w.writeheader()
            w.writerows(bias)
        (out / "bias.md").write_text(_markdown(bias))
    return {"attention": pngs, "top_tokens": top, "bias": bias}


@hydra.main(config_path=str(CONF_DIR), config_name="inspect", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    result = inspect_checkpoint(cfg)
    out = Path(cfg.paths.output_dir)
    print(f"attention maps: {len(result['attention'])} layers in {out / 'attention'}")
    print((out / "top_tokens.md").read_text())
    if result["bias"]:
        print((out / "bias.md").read_text())


if __name__ == "__main__":
    main()
