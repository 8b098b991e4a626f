"""Post-training dynamic int8 quantization of every `nn.Linear` (weights int8 per tensor, activations
quantized on the fly per batch) and the size of a network on disk."""

from __future__ import annotations

import copy
import io
import warnings

import torch
from torch import nn


def quantize_int8(network: nn.Module) -> nn.Module:
    """A copy of `network` whose Linear layers run in int8 (`torch.ao.quantization.quantize_dynamic`).

    Embeddings and norms stay fp32. A head tied to the token embedding (GPT's lm_head) gets its own
    int8 copy of that matrix: the matmul is the costly part, the lookup is not.
    """
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch >= 2.10 points to torchao; the eager API still works in 2.13
        warnings.simplefilter("ignore")
        return quantize_dynamic(copy.deepcopy(network).eval(), {nn.Linear}, dtype=torch.qint8)


def state_dict_bytes(network: nn.Module) -> int:
    """Bytes of `torch.save(network.state_dict())`: the size of the weights file (tied tensors once)."""
    buffer = io.BytesIO()
    torch.save(network.state_dict(), buffer)
    return buffer.getbuffer().nbytes
