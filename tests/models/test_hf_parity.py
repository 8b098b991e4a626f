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
        # The NSP head's two classes start nearly tied (std 0.02 weights); spread them so a swap shows.
        model.cls.seq_relationship.weight.normal_(0.0, 0.5)
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
    # The NSP head: HF's class 0 is "B continues A", ours (the data module's pair_label) is class 1.
    with torch.no_grad():
        pair = ours.pair_head(ours.pool(h))  # (B, 2)
    ref_pair = ref.seq_relationship_logits
    assert pair.shape == ref_pair.shape == (3, 2)
    assert (ref_pair[:, 0] - ref_pair[:, 1]).abs().min() > 0.1  # the classes differ: a swap would show
    diff = (pair - ref_pair.flip(-1)).abs().max().item()
    assert diff < TOL, diff


def test_bert_nsp_label_convention_survives_the_port():
    """HF's next_sentence_label 0 (B continues A) is our pair_label 1: HF's own NSP loss of a batch
    under its labels equals ours under the translated labels, and not under the same labels."""
    hf = random_bert()
    nsp = transformers.BertForNextSentencePrediction(hf.config).eval()
    missing, _ = nsp.load_state_dict(hf.state_dict(), strict=False)  # bert.* and cls.seq_relationship.*
    assert not missing, missing
    ours = bert_from_hf(hf).eval()
    ids = torch.randint(0, 97, (4, 32), generator=torch.Generator().manual_seed(2))
    segments = (torch.arange(32) >= 16).long().expand(4, 32)
    hf_labels = torch.tensor([0, 1, 1, 1])
    with torch.no_grad():
        ref = nsp(input_ids=ids, token_type_ids=segments, labels=hf_labels).loss
        logits = ours.pair_head(ours.pool(ours.features(ids, None, segments)))
    ce = torch.nn.functional.cross_entropy
    assert abs(ce(logits, 1 - hf_labels).item() - ref.item()) < TOL, (ce(logits, 1 - hf_labels), ref)
    assert abs(ce(logits, hf_labels).item() - ref.item()) > 0.01


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
        names = set(fresh.state_dict())
        assert make is random_gpt2 or {"cls.seq_relationship.weight", "cls.seq_relationship.bias"} <= names
        for name, t in fresh.state_dict().items():
            torch.testing.assert_close(t, ref[name], rtol=0, atol=0, msg=name)


def test_bert_for_masked_lm_has_no_pair_head_to_port():
    """BertForMaskedLM lacks the pooler and `cls.seq_relationship`: both directions still work
    (our pooler and pair_head keep their own initialisation) and the MLM logits still match."""
    hf = random_bert()
    mlm = transformers.BertForMaskedLM(hf.config).eval()
    ours = bert_from_hf(mlm)
    fresh = transformers.BertForMaskedLM(hf.config)
    bert_to_hf(ours, fresh)
    for name, t in fresh.state_dict().items():
        torch.testing.assert_close(t, mlm.state_dict()[name], rtol=0, atol=0, msg=name)
    ids = torch.randint(0, 97, (2, 32), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        diff = (ours.eval()(ids) - mlm(input_ids=ids).logits).abs().max().item()
    assert diff < TOL, diff
