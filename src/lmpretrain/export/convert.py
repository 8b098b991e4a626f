"""`export(cfg)`: one checkpoint (or HF folder) -> one output folder, with a report.json.

to=hf      transformers folder (GPT-2 / BERT) + tokenizer         (export/hf.py)
to=onnx    model.onnx, checked with onnxruntime                     (export/onnx.py)
to=int8    model_int8.pt: dynamic int8 Linear layers                (export/quantize.py)
to=pruned  model.ckpt: magnitude or structured pruning              (export/prune.py)
to=ckpt    model.ckpt: an HF folder imported for pretrained= / ckpt_path=
int8 and pruned also score the change: size on disk, held-out perplexity (causal LM) and top-1
agreement with the original (every network), written to report.json.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig
from torch import nn

from lmpretrain.atomic import atomic_torch_save, atomic_write_json
from lmpretrain.errors import ConfigError
from lmpretrain.export.prune import check_prune_args, prune_network, sparsity
from lmpretrain.export.quantize import quantize_int8, state_dict_bytes
from lmpretrain.export.scores import compare, forward_fn, heldout_blocks, is_causal_lm
from lmpretrain.export.source import Source, load_source

log = logging.getLogger(__name__)

TARGETS = ("hf", "onnx", "int8", "pruned", "ckpt")
MARKER = ".lmpretrain-export"  # an output folder holding it was written by this command
INT8_FORMAT = "lmpretrain-int8-dynamic"


def claim_output(out: Path) -> Path:
    """Create `out`, or reuse it when it is empty or an earlier export's; never another folder."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={out} is a file; give a folder for the export")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise ConfigError(f"out={out} is not empty and was not written by lmpretrain.export; give a new or "
                          f"empty folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by python -m lmpretrain.export; its files may be replaced\n")
    return out


def export(cfg: DictConfig) -> dict:
    """Run the export `cfg.to` of `cfg.ckpt_path` into `cfg.out`; returns (and writes) the report."""
    if cfg.to not in TARGETS:
        raise ConfigError(f"to={cfg.to!r} must be one of {TARGETS}")
    if cfg.to == "pruned":
        check_prune_args(cfg.prune.method, cfg.prune.amount, cfg.prune.scope, cfg.prune.unit)
    src = load_source(cfg.ckpt_path)
    out = claim_output(Path(cfg.out).expanduser())
    if cfg.to == "hf":
        from lmpretrain.export.hf import save_hf

        report = save_hf(src, out)
    elif cfg.to == "ckpt":
        from lmpretrain.export.hf import write_checkpoint

        report = write_checkpoint(src, out / "model.ckpt")
    elif cfg.to == "onnx":
        report = to_onnx(src, out / "model.onnx", cfg.onnx.opset, cfg.onnx.atol)
    else:
        report = compress(src, cfg, out)
    report = {"source": str(cfg.ckpt_path), "to": cfg.to, "kind": src.kind, **report}
    atomic_write_json(out / "report.json", report)
    return report


def to_onnx(src: Source, path: Path, opset: int, atol: float) -> dict:
    from lmpretrain.export.onnx import check_onnx, export_onnx, graph_for

    graph = graph_for(src)
    export_onnx(graph, path, opset)
    check = check_onnx(graph, path)
    if check["max_abs_diff"] > atol:
        raise RuntimeError(f"{path}: onnxruntime differs from PyTorch by {check['max_abs_diff']:.3g} > {atol}")
    return {"file": path.name, "exporter": "torch.onnx.export(dynamo=True)", "opset": opset,
            "onnxruntime_check": {**check, "atol": atol}}


def compress(src: Source, cfg: DictConfig, out: Path) -> dict:
    """int8 or pruned copy of the network, its file, and what changed (size, held-out scores)."""
    if cfg.to == "int8":
        compressed = quantize_int8(src.network)
        details: dict = {"method": "torch.ao.quantization.quantize_dynamic(nn.Linear, qint8)"}
    else:
        p = cfg.prune
        compressed = prune_network(src.network, p.method, p.amount, p.scope, p.unit)
        details = {"method": p.method, "amount": p.amount,
                   **({"scope": p.scope} if p.method == "magnitude" else {"unit": p.unit}),
                   "sparsity": sparsity(compressed)}
    report = {**details, "size_mb": {"before": state_dict_bytes(src.network) / 1e6,
                                     "after": state_dict_bytes(compressed) / 1e6}}
    if src.tokenizer_json is None:
        report["scores"] = "none: the source has no tokenizer to read held-out text with"
    else:
        h = cfg.heldout
        file = Path(h.file) if Path(h.file).is_absolute() else Path(cfg.paths.data_dir) / h.file
        blocks = heldout_blocks(file, src.tokenizer_json, min(h.block_size, src.network.config.block_size),
                                h.val_fraction, h.max_blocks)
        scores = compare(forward_fn(src.network, src.module), forward_fn(compressed, src.module), blocks,
                         is_causal_lm(src.network), h.batch_size)
        report.update({**scores, "heldout": {"file": str(file), "blocks": list(blocks.shape)}})
    if cfg.to == "int8":
        save_int8(src, compressed, out / "model_int8.pt")
        report["file"] = "model_int8.pt"
    else:
        from lmpretrain.export.hf import write_checkpoint

        report["file"] = write_checkpoint(src, out / "model.ckpt", compressed)["file"]
    return report


def save_int8(src: Source, quantized: nn.Module, path: Path) -> None:
    """The int8 network's state dict with what rebuilds it (`load_int8`); loads with weights_only."""
    head = getattr(src.network, "task_head", None)
    payload = {"format": INT8_FORMAT, "model": {k: v for k, v in src.model.items() if not k.startswith("_")},
               "num_outputs": head[-1].out_features if head is not None else None,
               "state_dict": quantized.state_dict(), "tokenizer_json": src.tokenizer_json}
    atomic_torch_save(payload, path)


def load_int8(path: str | Path) -> tuple[nn.Module, str | None]:
    """(int8 network, tokenizer json) of a `model_int8.pt` written by `to=int8`."""
    from lmpretrain.checkpoints import read_checkpoint
    from lmpretrain.models import build_network

    payload = read_checkpoint(path, "int8")
    if not isinstance(payload, dict) or payload.get("format") != INT8_FORMAT:
        raise ConfigError(f"{path} is not a model_int8.pt written by python -m lmpretrain.export to=int8")
    net = build_network(payload["model"])
    if payload["num_outputs"]:
        net.task_head = nn.Sequential(nn.Dropout(0.0), nn.Linear(net.config.n_embd, payload["num_outputs"]))
    net = quantize_int8(net)
    net.load_state_dict(payload["state_dict"])
    return net.eval(), payload["tokenizer_json"]
