"""Decoding: the KV cache changes nothing but speed, beam search and sampling behave as specified."""

import pytest
import torch
import torch.nn.functional as F

from lmpretrain.models import GPT, EncoderDecoder, EncoderDecoderConfig, GPTConfig
from lmpretrain.models.generation import generate, top_k_filter, top_p_filter

V = 50
POSITIONS = ["learned", "sinusoidal", "rotary"]


def spread(model):
    """Matrices drawn wider than the 0.02 init: a tiny random model then stops repeating its input
    token, so the decoded sequences vary (and a decoding bug shows)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    return model.eval()


def gpt(position="learned", block_size=32):
    torch.manual_seed(0)
    return spread(GPT(GPTConfig(vocab_size=V, block_size=block_size, n_layer=2, n_head=2, n_embd=32,
                                position=position)))


def encdec(position="rotary"):
    torch.manual_seed(0)
    return spread(EncoderDecoder(EncoderDecoderConfig(vocab_size=V, block_size=32, n_layer=2, n_decoder_layer=3,
                                                      n_head=2, n_embd=32, position=position, dropout=0.0)))


def ids(*shape, seed=1):
    return torch.randint(1, V, shape, generator=torch.Generator().manual_seed(seed))


def padded_batch():
    """Prompts of lengths 6, 3 (left-padded) and 4 (right-padded) in one (3, 6) batch."""
    x, mask = ids(3, 6), torch.ones(3, 6, dtype=torch.long)
    mask[1, :3] = 0
    mask[2, 4:] = 0
    return x.masked_fill(mask == 0, 0), mask


def model_and_input(kind, position):
    """(network, input_ids, attention_mask, extra generate kwargs) for each generative network."""
    if kind == "gpt":
        return gpt(position), *padded_batch(), {}
    x, mask = padded_batch()
    return encdec(position), x, mask, {"decoder_start_id": 3}


# ---- the cache ----------------------------------------------------------------------------------


@pytest.mark.parametrize("position", POSITIONS)
def test_cached_logits_match_uncached_gpt(position):
    """Feeding the tokens one at a time through the cache gives every position's full-pass logits."""
    model, x = gpt(position), ids(2, 12)
    full = model(x)
    cache = model.new_cache()
    prefix = model(x[:, :5], cache=cache)  # a prompt in one call, then one token per call
    steps = [model(x[:, t : t + 1], cache=cache) for t in range(5, 12)]
    assert cache.length == 12
    torch.testing.assert_close(torch.cat([prefix, *steps], 1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("position", POSITIONS)
def test_cached_logits_match_uncached_padded_rows(position):
    """Left-padded rows with per-row positions: each row's logits are those of the row alone."""
    model, (x, mask) = gpt(position), padded_batch()
    left = mask.argsort(dim=1, stable=True)
    x, mask = x.gather(1, left), mask.gather(1, left)  # rows 1 and 2 left-padded
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    cache = model.new_cache()
    last = model(x, mask, positions=positions, cache=cache)[:, -1]
    new = ids(3, 1, seed=2)
    mask2 = torch.cat((mask, torch.ones(3, 1, dtype=torch.long)), 1)
    step = model(new, mask2, positions=positions[:, -1:] + 1, cache=cache)[:, -1]
    for r in range(3):
        alone = torch.cat((x[r][mask[r].bool()], new[r]))[None]
        ref = model(alone)[0]
        torch.testing.assert_close(last[r], ref[-2], atol=1e-5, rtol=0)
        torch.testing.assert_close(step[r], ref[-1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("position", POSITIONS)
def test_cached_logits_match_uncached_encdec(position):
    model, (src, mask) = encdec(position), padded_batch()
    tgt = ids(3, 9, seed=3)
    memory = model.features(src, mask)
    full = model.decode(tgt, memory, mask)
    cache = model.new_cache()
    steps = [model.decode(tgt[:, t : t + 1], memory, mask, cache=cache) for t in range(9)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)
    # the cross-attention keys were computed once, from the memory: (B, heads, S, head_dim)
    assert all(layer.cross.k.shape == (3, 2, 6, 16) for layer in cache.layers)


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("kind", ["gpt", "encdec"])
def test_cached_decoding_gives_the_same_tokens(kind, position, strategy):
    model, x, mask, kw = model_and_input(kind, position)
    for m in (None, mask):
        with_cache = generate(model, x, m, max_new_tokens=12, strategy=strategy, **kw)
        without = generate(model, x, m, max_new_tokens=12, strategy=strategy, use_cache=False, **kw)
        assert with_cache.shape == (3, 12)
        assert torch.equal(with_cache, without)


def test_gpt_padded_rows_decode_as_if_alone():
    """Left or right padding: each row continues as it would in a batch of its own."""
    model, (x, mask) = gpt("rotary"), padded_batch()
    batch = generate(model, x, mask, max_new_tokens=8)
    for r in range(3):
        alone = generate(model, x[r][mask[r].bool()][None], max_new_tokens=8)
        assert torch.equal(batch[r], alone[0]), r


def test_gpt_slides_past_block_size_like_the_uncached_window():
    """Past block_size the window slides (recomputed without a cache), as the old GPT.generate did."""
    model, x = gpt(block_size=16), ids(2, 5)
    out = generate(model, x, max_new_tokens=20)
    assert torch.equal(out, generate(model, x, max_new_tokens=20, use_cache=False))
    ref = x
    for _ in range(20):
        ref = torch.cat((ref, model(ref[:, -16:])[:, -1].argmax(-1, keepdim=True)), 1)
    assert torch.equal(out, ref[:, 5:])


def test_training_forward_is_untouched_by_the_cache_arguments():
    """No cache, no positions: exactly the training computation (bit for bit)."""
    model, x = gpt("rotary"), ids(2, 12)
    assert torch.equal(model(x), model.lm_head(model.features(x, torch.ones_like(x))))


# ---- greedy and beam search ---------------------------------------------------------------------


def greedy_reference(model, x, steps):
    """Greedy by hand: argmax of a full forward pass, one token at a time."""
    for _ in range(steps):
        x = torch.cat((x, model(x)[:, -1].argmax(-1, keepdim=True)), 1)
    return x


def test_greedy_is_the_stepwise_argmax():
    model, x = gpt(), ids(2, 4)
    assert torch.equal(generate(model, x, max_new_tokens=7), greedy_reference(model, x, 7)[:, 4:])


@pytest.mark.parametrize("kind", ["gpt", "encdec"])
def test_beam_search_with_one_beam_is_greedy(kind):
    model, x, mask, kw = model_and_input(kind, "rotary")
    greedy = generate(model, x, mask, max_new_tokens=10, **kw)
    assert torch.equal(generate(model, x, mask, max_new_tokens=10, strategy="beam", num_beams=1, **kw), greedy)
    eos = int(greedy[0, 3])  # a token greedy emits: rows stop there (and pad after)
    greedy = generate(model, x, mask, max_new_tokens=10, eos_id=eos, pad_id=-1, **kw)
    beam = generate(model, x, mask, max_new_tokens=10, strategy="beam", num_beams=1, eos_id=eos, pad_id=-1, **kw)
    assert greedy.size(1) < 10 or (greedy == -1).any()  # the EOS stopped something
    assert torch.equal(beam, greedy)


@torch.no_grad()
def penalised_score(model, prompt, new, eos_id, length_penalty):
    """sum log p(new | prompt) / length**length_penalty, length up to and including EOS (HF)."""
    if eos_id is not None and (new == eos_id).any():
        new = new[: int((new == eos_id).nonzero()[0]) + 1]
    logp = F.log_softmax(model(torch.cat((prompt, new))[None])[0, len(prompt) - 1 : -1], -1)
    return logp.gather(1, new[:, None]).sum().item() / len(new) ** length_penalty


@pytest.mark.parametrize("eos_id,length_penalty", [(None, 1.0), (40, 1.0), (40, 0.0), (40, 2.0)])
def test_beam_search_scores_at_least_as_well_as_greedy(eos_id, length_penalty):
    """By the length-penalised score beam search ranks by, its best sequence is no worse than
    greedy's, and better for some rows (token 40 ends a greedy row in four of the six)."""
    model, x = gpt(), ids(6, 3, seed=4)
    kw = {"max_new_tokens": 8, "eos_id": eos_id, "length_penalty": length_penalty}
    greedy = generate(model, x, **kw)
    beam = generate(model, x, strategy="beam", num_beams=4, **kw)
    better = 0
    for r in range(len(x)):
        g = penalised_score(model, x[r], greedy[r], eos_id, length_penalty)
        b = penalised_score(model, x[r], beam[r], eos_id, length_penalty)
        assert b >= g - 1e-5, (r, b, g)
        better += b > g + 1e-3
    assert better >= 3


def test_eos_stops_a_row_and_pads_the_rest():
    model, x = gpt(), ids(3, 4)
    free = generate(model, x, max_new_tokens=10)
    eos = int(free[1, 2])  # row 1 emits this as its third token
    out = generate(model, x, max_new_tokens=10, eos_id=eos, pad_id=-1)
    for r in range(3):
        hits = (free[r] == eos).nonzero()
        if len(hits):
            stop = int(hits[0]) + 1
            assert torch.equal(out[r, :stop], free[r, :stop])
            assert (out[r, stop:] == -1).all()
        else:
            assert torch.equal(out[r], free[r, : out.size(1)])
    # every row stopped early: decoding ended at the last row's EOS
    if all((free[r] == eos).any() for r in range(3)):
        assert out.size(1) < 10 and (out[:, -1] == eos).any()
    # beam search: the best hypothesis also ends at EOS and pads after
    beam = generate(model, x, max_new_tokens=10, strategy="beam", eos_id=eos, pad_id=-1)
    for row in beam:
        hits = (row == eos).nonzero()
        if len(hits):
            assert (row[int(hits[0]) + 1 :] == -1).all()


def test_encdec_generation_starts_from_the_decoder_start_id():
    model, (src, mask) = encdec(), padded_batch()
    out = generate(model, src, mask, max_new_tokens=6, decoder_start_id=3)
    tgt = torch.full((3, 1), 3)
    memory = model.features(src, mask)
    for _ in range(6):
        tgt = torch.cat((tgt, model.decode(tgt, memory, mask)[:, -1].argmax(-1, keepdim=True)), 1)
    assert torch.equal(out, tgt[:, 1:])
    with pytest.raises(ValueError, match="decoder_start_id"):
        generate(model, src, mask, max_new_tokens=6)


# ---- sampling -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gpt", "encdec"])
def test_top_k_1_sampling_is_greedy(kind):
    model, x, mask, kw = model_and_input(kind, "learned")
    greedy = generate(model, x, mask, max_new_tokens=10, **kw)
    sampled = generate(model, x, mask, max_new_tokens=10, strategy="sample", temperature=1.3, top_k=1,
                       generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(sampled, greedy)


def test_sampling_is_reproducible_with_a_generator_and_varies_without_top_k():
    model, x = gpt(), ids(4, 3)

    def sample(seed):
        return generate(model, x, max_new_tokens=10, strategy="sample", temperature=2.0,
                        generator=torch.Generator().manual_seed(seed))

    assert torch.equal(sample(0), sample(0))
    assert not torch.equal(sample(0), sample(1))


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.1, 0.5, 0.05, 0.3, 0.05]])
    logits = probs.log()

    def kept(p):
        return set(torch.isfinite(top_p_filter(logits, p))[0].nonzero().flatten().tolist())

    assert kept(0.3) == {1}  # the top token alone (0.5) reaches 0.3
    assert kept(0.75) == {1, 3}  # 0.5 + 0.3
    assert kept(0.85) == {1, 3, 0}  # + 0.1
    assert kept(0.97) == {0, 1, 2, 3, 4}  # ties at the tail: both 0.05 tokens are needed to pass 0.95
    assert kept(1.0) == {0, 1, 2, 3, 4}
    # kept tokens keep their logits; sampling then renormalises over them
    filtered = top_p_filter(logits, 0.75)
    torch.testing.assert_close(F.softmax(filtered, -1)[0, [1, 3]], torch.tensor([0.625, 0.375]))
    assert torch.equal(filtered[0, [1, 3]], logits[0, [1, 3]])
    # row-wise on a batch
    two = torch.stack((logits[0], logits[0].flip(0)))
    assert torch.isfinite(top_p_filter(two, 0.75)).sum(1).tolist() == [2, 2]


def test_top_k_filter():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0]])
    assert torch.isfinite(top_k_filter(logits, 2)).tolist() == [[False, True, True, False]]
    assert torch.isfinite(top_k_filter(logits, 10)).all()


def test_sampling_never_leaves_the_nucleus():
    model, x = gpt(), ids(2, 3)
    gen = torch.Generator().manual_seed(0)
    out = generate(model, x, max_new_tokens=1, strategy="sample", top_p=0.3, generator=gen)
    allowed = torch.isfinite(top_p_filter(model(x)[:, -1], 0.3))
    assert allowed.gather(1, out).all()


def test_bad_arguments():
    model, x = gpt(), ids(1, 3)
    with pytest.raises(ValueError, match="strategy"):
        generate(model, x, max_new_tokens=2, strategy="nucleus")
    with pytest.raises(ValueError, match="top_p"):
        generate(model, x, max_new_tokens=2, strategy="sample", top_p=0.0)
    with pytest.raises(TypeError, match="GPT or an EncoderDecoder"):
        generate(torch.nn.Linear(2, 2), x, max_new_tokens=2)
    assert generate(model, x, max_new_tokens=0).shape == (1, 0)
    model.train()
    generate(model, x, max_new_tokens=1)  # runs in eval mode, then restores the mode
    assert model.training


# ---- the pointer-generator copy head ---------------------------------------------------------------


def encdec_with_copy(gate_bias=0.0):
    from lmpretrain.models.encdec import CopyHead

    model = encdec()
    torch.manual_seed(1)
    model.copy_head = CopyHead(model.config).eval()
    with torch.no_grad():
        model.copy_head.gate.bias.fill_(gate_bias)
    return model


def test_copy_head_outputs_a_distribution_that_only_copies_source_tokens_when_the_gate_is_shut():
    src, mask = padded_batch()
    tgt = ids(3, 5, seed=3)
    logp = encdec_with_copy()(src, tgt, mask)
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(3, 5), atol=1e-5, rtol=0)
    # p_gen ~ 0: every bit of mass sits on the row's own (unpadded) source tokens
    p = encdec_with_copy(gate_bias=-30.0)(src, tgt, mask).exp()
    for r in range(3):
        allowed = torch.zeros(V, dtype=torch.bool)
        allowed[src[r][mask[r].bool()]] = True
        torch.testing.assert_close(p[r][:, allowed].sum(-1), torch.ones(5), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="source_ids"):
        encdec_with_copy().decode(tgt, encdec_with_copy().features(src, mask), mask)


def test_copy_head_cached_log_probs_match_uncached():
    model, (src, mask) = encdec_with_copy(), padded_batch()
    tgt = ids(3, 9, seed=3)
    memory = model.features(src, mask)
    full = model.decode(tgt, memory, mask, source_ids=src)
    cache = model.new_cache()
    steps = [model.decode(tgt[:, t : t + 1], memory, mask, cache=cache, source_ids=src) for t in range(9)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)
    assert cache.memory.k.shape == (3, 2, 6, 16)  # the head's memory keys, computed on the first step only
    assert cache.memory.v is None  # the memory itself is not copied into the cache


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_copy_head_cached_decoding_gives_the_same_tokens(strategy):
    model, (x, mask) = encdec_with_copy(), padded_batch()
    for m in (None, mask):
        kw = {"max_new_tokens": 10, "strategy": strategy, "decoder_start_id": 3}
        assert torch.equal(generate(model, x, m, **kw), generate(model, x, m, use_cache=False, **kw))


def test_copy_head_learns_to_copy_unseen_source_tokens_that_the_plain_head_cannot():
    """The target is the source itself, over a 2,000-token vocabulary; train and test sources
    share no token. A model without a pointer must have learned each test token's output row, which
    it never saw as a target: chance (1/2000) at best. The copy head attends to the token instead."""
    vocab, L = 2000, 6
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(vocab - 2, generator=g) + 2
    train_tokens, test_tokens = perm[:1000], perm[1000:]

    def batch(pool, n):
        src = pool[torch.randint(len(pool), (n, L), generator=g)]
        start = torch.ones(n, 1, dtype=torch.long)  # decoder start id 1
        return src, torch.cat((start, src[:, :-1]), 1), src

    accuracy = {}
    for copy in (False, True):
        torch.manual_seed(0)
        model = EncoderDecoder(EncoderDecoderConfig(vocab_size=vocab, block_size=16, n_layer=1, n_head=2, n_embd=64,
                                                    dropout=0.0))
        if copy:
            from lmpretrain.models.encdec import CopyHead

            model.copy_head = CopyHead(model.config)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for _ in range(100):
            src, dec, labels = batch(train_tokens, 32)
            loss = F.cross_entropy(model(src, dec).flatten(0, 1), labels.flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
        src, _, labels = batch(test_tokens, 64)
        out = generate(model, src, max_new_tokens=L, decoder_start_id=1)
        accuracy[copy] = (out == labels).float().mean().item()
    assert accuracy[False] < 0.05, accuracy
    assert accuracy[True] > 0.9, accuracy


def test_ban_repeated_ngrams_masks_only_the_tokens_that_would_repeat_an_ngram():
    from lmpretrain.models.generation import ban_repeated_ngrams

    generated = torch.tensor([[5, 6, 7, 5, 6], [1, 2, 3, 4, 2]])
    logits = torch.zeros(2, 10)

    def banned(n):
        return [torch.nonzero(row.isinf()).flatten().tolist() for row in ban_repeated_ngrams(logits, generated, n)]

    assert banned(3) == [[7], []]  # "5 6" was followed by 7: "5 6 7" may not come twice
    assert banned(2) == [[7], [3]]  # after 6: 7; after 2: 3
    assert banned(1) == [[5, 6, 7], [1, 2, 3, 4]]
    assert banned(0) == [[], []] and banned(7) == [[], []]


@pytest.mark.parametrize("strategy", ["greedy", "beam", "sample"])
@pytest.mark.parametrize("kind", ["gpt", "encdec"])
def test_no_repeat_ngram_size_leaves_no_repeated_ngram(kind, strategy):
    model, x, mask, kw = model_and_input(kind, "rotary")
    with torch.no_grad():  # a model that repeats itself: every token's logits favour tokens 7 and 8
        model.lm_head.weight[7:9] *= 5
    top_k = 2 if strategy == "sample" else None  # sampling from 7 and 8 too

    def run(**more):
        return generate(model, x, mask, max_new_tokens=16, strategy=strategy, top_k=top_k,
                        generator=torch.Generator().manual_seed(0), **kw, **more)

    plain, n = run(), 2

    def grams(row):
        return [tuple(row[i:i + n]) for i in range(len(row) - n + 1)]

    assert any(len(set(grams(r))) < len(grams(r)) for r in plain.tolist())  # it did repeat
    for r in run(no_repeat_ngram_size=n).tolist():
        assert len(set(grams(r))) == len(grams(r)), r
    assert torch.equal(run(no_repeat_ngram_size=0), plain)
