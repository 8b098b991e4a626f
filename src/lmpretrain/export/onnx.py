"""ONNX export with dynamic batch and sequence axes, checked by running the file with onnxruntime.

Uses the `torch.export`-based exporter (`torch.onnx.export(..., dynamo=True)`, opset 18): in torch
2.13 the TorchScript exporter (`dynamo=False`) fails to trace these networks, so there is no fallback.
Exported: a causal LM's logits (input_ids), an encoder's MLM logits and a sequence classifier's
label logits (input_ids, attention_mask). The encoder-decoder is not (its decoding needs two graphs
and a cache); nor are the token-level task heads.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from lmpretrain.errors import ConfigError
from lmpretrain.export.source import Source
from lmpretrain.models import GPT, Encoder


class LogitsGraph(nn.Module):
    """What an ONNX graph computes: `inputs` (names, in order) -> one output."""

    def __init__(self, fn, inputs: tuple[str, ...], output: str, block_size: int, vocab_size: int):
        super().__init__()
        self.fn, self.inputs, self.output = fn, inputs, output
        self.block_size, self.vocab_size = block_size, vocab_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.fn(input_ids, attention_mask)

    def example(self, batch: int, seq: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """Random inputs (B, T); the attention mask pads the last rows' tails, so masking is exercised."""
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, self.vocab_size, (batch, seq), generator=g)
        if "attention_mask" not in self.inputs:
            return (ids,)
        mask = torch.ones(batch, seq, dtype=torch.long)
        for row in range(1, batch):
            mask[row, max(1, seq - row * seq // (2 * batch)):] = 0
        return ids, mask


def graph_for(src: Source, network: nn.Module | None = None) -> LogitsGraph:
    """The forward to export for `src` (with `network` in place of its own, e.g. a compressed copy)."""
    net = src.network if network is None else network
    c = net.config
    if hasattr(net, "task_head"):
        if type(src.module).__name__ != "SequenceClassificationModule":
            raise ConfigError(f"ONNX export covers causal LMs, encoders and sequence classifiers, not a "
                              f"{type(src.module).__name__}")
        module = src.module

        def classify(ids, mask):
            original = module.network
            module.network = net
            try:
                return module({"input_ids": ids, "attention_mask": mask})  # (B, labels)
            finally:
                module.network = original

        return LogitsGraph(classify, ("input_ids", "attention_mask"), "logits", c.block_size, c.vocab_size)
    if isinstance(net, GPT):
        return LogitsGraph(lambda ids, mask: net(ids), ("input_ids",), "logits", c.block_size, c.vocab_size)
    if isinstance(net, Encoder):
        return LogitsGraph(lambda ids, mask: net(ids, mask), ("input_ids", "attention_mask"), "logits",
                           c.block_size, c.vocab_size)
    raise ConfigError(f"ONNX export covers GPT, the encoder and sequence classifiers, not a {type(net).__name__} "
                      f"(an encoder-decoder decodes with two graphs and a cache)")


def export_onnx(graph: LogitsGraph, path: Path, opset: int = 18) -> None:
    """Write `graph` to `path` with batch and sequence (<= block_size) as dynamic axes."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("seq", min=1, max=graph.block_size)
    example = graph.example(2, min(16, graph.block_size))
    shapes = tuple({0: batch, 1: seq} for _ in example)
    onnx_log = logging.getLogger("torch.onnx")
    level = onnx_log.level
    onnx_log.setLevel(logging.ERROR)  # "torchvision is not installed" notices, once per op
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(graph.eval(), example, dynamo=True, opset_version=opset,
                                        input_names=list(graph.inputs), output_names=[graph.output],
                                        dynamic_shapes=shapes, verbose=False)
    finally:
        onnx_log.setLevel(level)
    program.save(str(path))


def ort_session(path: Path, threads: int | None = None):
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("ONNX export needs onnxruntime and onnxscript; pip install 'lmpretrain[export]'") from None
    options = ort.SessionOptions()
    if threads:  # a fixed thread count whose idle threads sleep (bench/inference.py's OMP_WAIT_POLICY)
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@torch.no_grad()
def check_onnx(graph: LogitsGraph, path: Path, shapes=((1, 1), (3, 7), (2, None))) -> dict:
    """Run the file with onnxruntime on inputs of several shapes (None = block_size, none of them
    the export's example) and compare with PyTorch: {"max_abs_diff": ..., "shapes": [...]}."""
    session = ort_session(path)
    worst, tried = 0.0, []
    for i, (b, t) in enumerate(shapes):
        inputs = graph.example(b, t or graph.block_size, seed=i + 1)
        ref = graph(*inputs)
        out = session.run(None, {n: x.numpy() for n, x in zip(graph.inputs, inputs)})[0]
        worst = max(worst, (torch.from_numpy(out) - ref).abs().max().item())
        tried.append(list(inputs[0].shape))
    return {"max_abs_diff": worst, "shapes": tried}
