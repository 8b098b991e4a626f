import pytest
import torch

from lmpretrain.errors import ConfigError
from lmpretrain.models import GPT, GPTConfig, build_network
from lmpretrain.optim import weight_decay_groups


def tiny(position="learned", **kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32, position=position, **kw))


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rotary"])
def test_decoder_is_causal(position):
    """Changing a future token must not change any earlier position's logits."""
    model = tiny(position).eval()
    x = torch.randint(0, 50, (2, 16))
    y = x.clone()
    y[:, 10] = (y[:, 10] + 1) % 50
    a, b = model(x), model(y)
    assert a.shape == (2, 16, 50)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_positions_matter():
    """With positions, a permuted input changes the logits (a bag-of-words model would not)."""
    for position in ("learned", "sinusoidal", "rotary"):
        model = tiny(position).eval()
        x = torch.randint(0, 50, (1, 8))
        assert not torch.allclose(model(x)[0, -1], model(x.flip(1))[0, -1])


def test_tied_embeddings_and_weight_decay_groups():
    model = tiny()
    assert model.lm_head.weight is model.tok_emb.weight
    decay, no_decay = weight_decay_groups(model, 0.1)
    decayed = {id(p) for p in decay["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    for n, p in model.named_parameters():
        expect = p.ndim == 2 and "emb" not in n
        assert (id(p) in decayed) == expect, n
    # every parameter exactly once (the tied head is not counted twice)
    assert len(decay["params"]) + len(no_decay["params"]) == len(names)


def test_generate_greedy_and_top_k():
    model = tiny().eval()
    prompt = torch.randint(0, 50, (2, 4))
    greedy = model.generate(prompt, 6, temperature=0)
    assert greedy.shape == (2, 10) and torch.equal(greedy[:, :4], prompt)
    # top_k=1 sampling can only pick the argmax: identical to greedy
    top1 = model.generate(prompt, 6, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(greedy, top1)
    # greedy continuation = argmax of the logits step by step
    assert greedy[0, 4] == model(prompt)[0, -1].argmax()


def test_bad_model_config_is_one_clear_error():
    with pytest.raises(ConfigError, match="divisible"):
        GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ConfigError, match="position"):
        GPTConfig(position="alibi")
    with pytest.raises(ConfigError, match="unknown key"):
        build_network({"arch": "gpt", "vocab_size": 10, "n_layers": 3})
    with pytest.raises(ValueError, match="block_size"):
        tiny()(torch.zeros(1, 17, dtype=torch.long))
