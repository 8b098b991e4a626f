"""Runtime options of module.py: fused loss, activation checkpointing, compile, FLOP count."""

import pytest
import torch
import torch.nn.functional as F

from lmpretrain.module import RuntimeOptions
from lmpretrain.objectives import CausalLMModule
from lmpretrain.objectives.causal_lm import causal_lm_loss, linear_cross_entropy

# gpt_tiny with vocab 67 (the tiny-shakespeare char tokenizer).
TINY = dict(arch="gpt", vocab_size=67, block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0)


def module(**runtime):
    torch.manual_seed(0)
    m = CausalLMModule(TINY)
    m.connect(runtime=RuntimeOptions(**runtime))
    m.configure_model()
    return m


def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 67, (3, 65), generator=g)
    labels = ids[:, 1:].clone()
    labels[0, :5] = -100  # ignored positions must not count in the mean
    return {"input_ids": ids[:, :-1], "labels": labels}


def loss_and_grads(m):
    loss = causal_lm_loss(m.network, batch(), m.runtime)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}


def test_linear_cross_entropy_equals_full_logits_in_value_and_gradient():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(37, 16, generator=g, requires_grad=True)
    w = torch.randn(50, 16, generator=g, requires_grad=True)
    y = torch.randint(0, 50, (37,), generator=g)
    y[3] = y[20] = -100
    ref = F.cross_entropy(h @ w.T, y, ignore_index=-100)
    ref_grads = torch.autograd.grad(ref, (h, w))
    fused = linear_cross_entropy(h, w, y, chunk=8)  # 37 rows: 4 full chunks and a partial one
    grads = torch.autograd.grad(fused, (h, w))
    torch.testing.assert_close(fused, ref, rtol=1e-6, atol=1e-6)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("runtime", [dict(fused_loss=True, loss_chunk_tokens=50), dict(activation_checkpointing=True)])
def test_runtime_option_keeps_loss_and_gradients(runtime):
    ref_loss, ref_grads = loss_and_grads(module())
    loss, grads = loss_and_grads(module(**runtime))
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-6, msg=name)


def test_activation_checkpointing_recomputes_each_block_in_backward():
    calls = {"plain": 0, "checkpointed": 0}
    for kind, m in [("plain", module()), ("checkpointed", module(activation_checkpointing=True))]:
        for block in m.network.blocks:
            block.mlp.fc.register_forward_hook(lambda *_, k=kind: calls.__setitem__(k, calls[k] + 1))
        causal_lm_loss(m.network, batch(), m.runtime).backward()
    assert calls == {"plain": 4, "checkpointed": 8}  # 4 blocks, forward once more each in backward
    assert list(module(activation_checkpointing=True).state_dict()) == list(module().state_dict())  # same keys


def test_flops_per_token_is_6n_plus_attention():
    # Non-embedding parameters of gpt_tiny (vocab 67, tied head, learned positions excluded):
    # token embedding 67*128 + 4 blocks x 198,272 + final norm 256 = 801,920.
    m = module()
    assert m.network.num_params() == 801_920
    assert m.flops_per_token(64) == 6 * 801_920 + 12 * 4 * 128 * 64 == 5_204_736


@pytest.mark.slow  # inductor compiles C++ kernels: ~a minute on 2 cores
def test_compile_is_in_place_and_numerically_equal():
    ref_loss, ref_grads = loss_and_grads(module())
    m = module(compile=True)
    assert m.network._compiled_call_impl is not None
    assert list(m.state_dict()) == list(module().state_dict())  # no `_orig_mod.` prefix
    loss, grads = loss_and_grads(m)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-5, msg=name)


def test_float32_matmul_precision_is_set_on_a_gpu_only(monkeypatch):
    """runtime.float32_matmul_precision=high (default) puts a GPU run's fp32 matmuls on TF32 tensor
    cores (Lightning printed a tip on every H200 run without it); a CPU run keeps exact fp32."""
    from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator

    from lmpretrain.errors import ConfigError
    from lmpretrain.module import RuntimeOptions, use_matmul_precision

    before = torch.get_float32_matmul_precision()
    monkeypatch.setattr(torch, "set_float32_matmul_precision", lambda v: calls.append(v))
    calls = []
    use_matmul_precision(CPUAccelerator(), RuntimeOptions())
    assert calls == [] and torch.get_float32_matmul_precision() == before
    use_matmul_precision(CUDAAccelerator(), RuntimeOptions())  # the accelerator's type decides; no GPU needed
    use_matmul_precision(CUDAAccelerator(), RuntimeOptions(float32_matmul_precision="highest"))
    assert calls == ["high", "highest"]
    with pytest.raises(ConfigError, match=r"runtime.float32_matmul_precision='tf32' must be one of highest, high, medium"):
        RuntimeOptions(float32_matmul_precision="tf32")
