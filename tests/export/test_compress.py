"""int8 dynamic quantization and pruning on small random networks: exact sparsity counts, outputs
unchanged at amount=0, what a removed unit leaves behind, and the size of the int8 weights."""

import pytest
import torch

from lmpretrain.errors import ConfigError
from lmpretrain.export.prune import block_linears, prune_network, sparsity
from lmpretrain.export.quantize import quantize_int8, state_dict_bytes
from lmpretrain.models import GPT, Encoder, EncoderConfig, GPTConfig
from lmpretrain.models.generation import generate

IDS = torch.randint(0, 101, (3, 24), generator=torch.Generator().manual_seed(0))


def gpt(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = {"vocab_size": 101, "block_size": 32, "n_layer": 2, "n_head": 4, "n_embd": 64}
    return GPT(GPTConfig(**{**cfg, **kw})).eval()


def zeros(t: torch.Tensor) -> int:
    return int((t == 0).sum())


def test_int8_weights_are_a_third_and_logits_stay_close():
    torch.manual_seed(0)
    net = gpt(n_embd=128, vocab_size=50)  # block Linears dominate, as in real models
    q = quantize_int8(net)
    assert type(q) is GPT and all(type(m) is torch.nn.Linear for m in block_linears(net))  # a copy
    ratio = state_dict_bytes(q) / state_dict_bytes(net)
    assert 0.25 < ratio < 0.4, ratio  # int8 Linear weights; embeddings, norms, biases stay fp32
    with torch.no_grad():
        ref, out = net(IDS % 50), q(IDS % 50)
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9
    assert generate(q, IDS[:1, :8] % 50, max_new_tokens=5).shape == (1, 5)  # decodes with its KV cache


@pytest.mark.parametrize("amount", [0.3, 0.55])
def test_magnitude_per_layer_zeros_exactly_the_amount_of_each_layer(amount):
    pruned = prune_network(gpt(), "magnitude", amount, scope="layer")
    for lin in block_linears(pruned):
        assert zeros(lin.weight) == round(amount * lin.weight.numel())
        assert not hasattr(lin, "weight_orig") and not hasattr(lin, "weight_mask")  # made permanent
    assert zeros(pruned.tok_emb.weight) == 0 and pruned.lm_head.weight is pruned.tok_emb.weight


def test_magnitude_global_zeros_the_smallest_weights_of_all_layers_together():
    net = gpt()
    pruned = prune_network(net, "magnitude", 0.4, scope="global")
    weights = torch.cat([lin.weight.flatten() for lin in block_linears(net)])
    assert sparsity(pruned)["block_linear_sparsity"] == round(0.4 * weights.numel()) / weights.numel()
    threshold = weights.abs().kthvalue(round(0.4 * weights.numel())).values
    for before, after in zip(block_linears(net), block_linears(pruned)):
        small = before.weight.abs() <= threshold
        assert torch.equal(after.weight == 0, small)  # exactly the globally smallest, per layer unequal
    per_layer = [zeros(lin.weight) / lin.weight.numel() for lin in block_linears(pruned)]
    assert max(per_layer) - min(per_layer) > 0.01


@pytest.mark.parametrize("method,kw", [("magnitude", {"scope": "global"}), ("magnitude", {"scope": "layer"}),
                                       ("structured", {"unit": "rows"}), ("structured", {"unit": "heads"})])
def test_amount_zero_leaves_outputs_unchanged(method, kw):
    net = gpt()
    with torch.no_grad():
        assert torch.equal(prune_network(net, method, 0.0, **kw)(IDS), net(IDS))


def test_structured_rows_remove_whole_mlp_neurons():
    net = gpt()
    with torch.no_grad():  # non-zero biases, so a neuron left half-removed would still leak
        for b in net.blocks:
            b.mlp.fc.bias.normal_()
    pruned = prune_network(net, "structured", 0.25, unit="rows")
    hidden = 4 * 64
    for before, after in zip(net.blocks, pruned.blocks):
        gone = (after.mlp.fc.weight == 0).all(dim=1)  # (hidden,)
        assert int(gone.sum()) == round(0.25 * hidden)
        assert (after.mlp.fc.bias[gone] == 0).all() and (after.mlp.proj.weight[:, gone] == 0).all()
        norms = before.mlp.fc.weight.norm(dim=1)
        assert norms[gone].max() <= norms[~gone].min()  # the smallest L2 rows
        # The neuron contributes nothing: the MLP equals one without those neurons.
        x = torch.randn(5, 64)
        keep = ~gone
        small = torch.nn.functional.gelu(x @ before.mlp.fc.weight[keep].T + before.mlp.fc.bias[keep])
        ref = small @ before.mlp.proj.weight[:, keep].T + before.mlp.proj.bias
        torch.testing.assert_close(after.mlp(x), ref, rtol=1e-5, atol=1e-6)


def test_structured_heads_zero_whole_heads_exact_sparsity():
    pruned = prune_network(gpt(), "structured", 0.5, unit="heads")
    for block in pruned.blocks:
        heads = block.attn.q.weight.view(4, 16, 64)
        gone = (heads == 0).all(dim=(1, 2))
        assert int(gone.sum()) == 2
        for lin in (block.attn.k, block.attn.v):
            assert torch.equal((lin.weight.view(4, 16, 64) == 0).all(dim=(1, 2)), gone)
        assert (block.attn.proj.weight.view(64, 4, 16)[:, gone] == 0).all()
    # q, k, v rows and proj columns of half the heads: half of 4C^2 out of the blocks' 12C^2 weights
    assert sparsity(pruned)["block_linear_sparsity"] == pytest.approx(2 / 12, abs=1e-12)


def test_structured_pruning_covers_the_encoder_too():
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(vocab_size=101, block_size=32, n_embd=64, n_head=4, dropout=0.0)).eval()
    pruned = prune_network(enc, "structured", 0.5, unit="rows")
    assert all(int((b.mlp.fc.weight == 0).all(dim=1).sum()) == 128 for b in pruned.blocks)


def test_bad_prune_settings_are_one_error_naming_each_key():
    with pytest.raises(ConfigError, match=r"prune.method='random'.*prune.amount=1.0"):
        prune_network(gpt(), "random", 1.0)
    with pytest.raises(ConfigError, match="prune.unit='cols'"):
        prune_network(gpt(), "structured", 0.2, unit="cols")
