"""Numerical parity with `transformers` (a dev-only dependency): port the weights of a randomly
initialised HF BERT / GPT-2 into our Encoder / GPT and compare logits in float32."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lmpretrain.models.hf_port import bert_from_hf, bert_to_hf, gpt2_from_hf, gpt2_to_hf

TOL = 1e-5


def random_bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=97, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                                  intermediate_size=256, max_position_embeddings=32, type_vocab_size=2,
                                  attn_implementation="eager")
    model = transformers.BertForPreTraining(cfg).eval()
    # HF zero-initialises biases and sets norms to 1: randomise them so a mis-mapped bias shows.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def random_gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=97, n_positions=32, n_embd=64, n_layer=3, n_head=4,
                                  bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def test_bert_logits_match_hf_within_1e5():
    hf = random_bert()
    ours = bert_from_hf(hf).eval()
    ids = torch.randint(0, 97, (3, 32), generator=torch.Generator().manual_seed(1))
    segments = (torch.arange(32) >= 12).long().expand(3, 32)
    mask = torch.ones(3, 32, dtype=torch.long)
    mask[1, 20:] = 0  # a padded row: padding must be masked the same way
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=segments)
        h = ours.features(ids, mask, segments)
        logits = ours.mlm_head(h)
    diff = (logits - ref.prediction_logits).abs().max().item()
    assert diff < TOL, diff
    pooled_ref = hf.bert(input_ids=ids, attention_mask=mask, token_type_ids=segments).pooler_output
    assert (ours.pool(h) - pooled_ref).abs().max().item() < TOL


def test_gpt2_logits_match_hf_within_1e5():
    hf = random_gpt2()
    ours = gpt2_from_hf(hf).eval()
    assert ours.config.activation == "gelu_tanh"  # GPT-2's "gelu_new"
    ids = torch.randint(0, 97, (3, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (ours(ids) - hf(input_ids=ids).logits).abs().max().item()
    assert diff < TOL, diff


def test_ports_round_trip_into_fresh_hf_models():
    """ours -> HF (the export direction) gives back the original tensors exactly."""
    for make, to_ours, to_hf in ((random_bert, bert_from_hf, bert_to_hf), (random_gpt2, gpt2_from_hf, gpt2_to_hf)):
        hf = make()
        fresh = type(hf)(hf.config)
        to_hf(to_ours(hf), fresh)
        ref = hf.state_dict()
        for name, t in fresh.state_dict().items():
            if "seq_relationship" in name:  # the NSP head lives in the objective, not the network
                continue
            torch.testing.assert_close(t, ref[name], rtol=0, atol=0, msg=name)
