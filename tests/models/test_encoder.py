"""The encoder is bidirectional and respects padding; the encoder-decoder's decoder is causal and
reads the encoder only through cross-attention; all three share `Block`."""

import pytest
import torch

from lmpretrain.errors import ConfigError
from lmpretrain.models import Encoder, EncoderConfig, EncoderDecoder, EncoderDecoderConfig, build_network
from lmpretrain.models.blocks import Block


def encoder(**kw):
    torch.manual_seed(0)
    return Encoder(EncoderConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0, **kw)).eval()


def encdec(**kw):
    torch.manual_seed(0)
    return EncoderDecoder(EncoderDecoderConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32,
                                               dropout=0.0, **kw)).eval()


@pytest.mark.parametrize("pre_norm", [False, True])
def test_encoder_is_bidirectional(pre_norm):
    model = encoder(pre_norm=pre_norm)
    x = torch.randint(0, 50, (2, 16))
    y = x.clone()
    y[:, 12] = (y[:, 12] + 1) % 50
    a, b = model(x), model(y)
    assert a.shape == (2, 16, 50)
    assert not torch.allclose(a[:, :12], b[:, :12])  # earlier positions see a later token


def test_padding_does_not_reach_real_tokens():
    model = encoder()
    x = torch.randint(0, 50, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[:, 10:] = 0
    y = x.clone()
    y[:, 10:] = 0
    torch.testing.assert_close(model(x, mask)[:, :10], model(y, mask)[:, :10])


def test_segment_ids_and_positions_matter():
    model = encoder()
    x = torch.randint(0, 50, (1, 16))
    seg = torch.zeros_like(x)
    seg[:, 8:] = 1
    assert not torch.allclose(model(x), model(x, token_type_ids=seg))
    assert not torch.allclose(model(x)[0, 0], model(x.flip(1))[0, -1])


def test_mlm_head_is_tied_and_blocks_are_shared():
    model, t5 = encoder(), encdec()
    assert model.mlm_head.decoder.weight is model.tok_emb.weight
    assert t5.lm_head.weight is t5.tok_emb.weight
    assert all(type(b) is Block for b in [*model.blocks, *t5.encoder, *t5.decoder])
    assert all(b.cross_attn is not None for b in t5.decoder) and all(b.cross_attn is None for b in t5.encoder)


@pytest.mark.parametrize("position", ["rotary", "learned"])
def test_decoder_is_causal_and_cross_attends(position):
    model = encdec(position=position)
    src, tgt = torch.randint(0, 50, (2, 12)), torch.randint(0, 50, (2, 8))
    base = model(src, tgt)
    assert base.shape == (2, 8, 50)
    tgt2 = tgt.clone()
    tgt2[:, 5] = (tgt2[:, 5] + 1) % 50
    changed = model(src, tgt2)
    torch.testing.assert_close(base[:, :5], changed[:, :5])  # the future stays hidden
    src2 = src.clone()
    src2[:, -1] = (src2[:, -1] + 1) % 50
    assert not torch.allclose(base[:, 0], model(src2, tgt)[:, 0])  # every step reads the whole input
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[:, 9:] = 0  # padded encoder positions are invisible to cross-attention
    torch.testing.assert_close(model(src, tgt, mask), model(torch.where(mask.bool(), src, 0), tgt, mask))


def test_registry_and_config_errors():
    assert isinstance(build_network({"arch": "bert", "vocab_size": 10, "n_layer": 1}), Encoder)
    assert build_network({"arch": "t5", "vocab_size": 10, "n_layer": 1}).config.n_decoder_layer == 1
    with pytest.raises(ConfigError, match="divisible"):
        EncoderConfig(n_embd=30, n_head=4)
    with pytest.raises(ConfigError, match="activation"):
        EncoderDecoderConfig(activation="swish")
    with pytest.raises(ConfigError, match="unknown key"):
        build_network({"arch": "bert", "vocab_size": 10, "n_decoder_layer": 2})


def test_t5_initial_logits_have_unit_scale():
    """T5 scales the decoder output by n_embd**-0.5 before the tied head, which assumes its N(0, 1)
    embedding: then a logit is a sum of n_embd terms of variance 1 / n_embd, std ~1. With GPT's
    N(0, 0.02) the logits were ~0.02: a flat softmax with gradients as small, the reason seq2seq
    fine-tuning learned nothing in 300 steps."""
    torch.manual_seed(0)
    model = EncoderDecoder(EncoderDecoderConfig(vocab_size=1000, block_size=16, n_layer=2, n_head=2, n_embd=128,
                                                dropout=0.0))
    ids = torch.randint(0, 1000, (4, 16))
    logits = model(ids, ids.roll(1, dims=1))
    assert 0.5 < logits.std().item() < 2.0, logits.std()
