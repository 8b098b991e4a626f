"""Export to the transformers layout and import back: HF's own classes give our logits (atol 1e-4)
on random ids, ours -> HF folder -> ours is exact, a feature GPT-2/BERT cannot represent is refused
by name, a pickle-only folder is never unpickled, and an import becomes a `pretrained=` checkpoint."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tokenizers import Tokenizer

from lmpretrain.checkpoints import load_module
from lmpretrain.errors import ConfigError
from lmpretrain.export.hf import load_hf, save_hf, write_checkpoint
from lmpretrain.export.source import Source, load_source
from lmpretrain.models import GPT, Encoder, EncoderConfig, GPTConfig
from lmpretrain.objectives import CausalLMModule
from lmpretrain.tasks.base import read_pretrained
from lmpretrain.tokenizers.build import TokenizerConfig, build_char_tokenizer

ATOL = 1e-4
VOCAB = "abcdefghijklmnopqrstuvwxyz .,\n"


def char_tokenizer() -> Tokenizer:
    return build_char_tokenizer(VOCAB, TokenizerConfig(special_tokens=["<|endoftext|>", "[PAD]", "[MASK]"]))


def randomised(net):
    """Every weight moved by N(0, 0.1): non-zero biases, non-unit norms and logits far from 0, so
    anything mapped wrongly shows in the logits."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net.eval()


def small_gpt(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = {"vocab_size": char_tokenizer().get_vocab_size(), "block_size": 32, "n_layer": 2, "n_head": 4,
           "n_embd": 32, "activation": "gelu_tanh"}
    return randomised(GPT(GPTConfig(**{**cfg, **kw})))


def small_encoder(**kw) -> Encoder:
    torch.manual_seed(0)
    cfg = {"vocab_size": char_tokenizer().get_vocab_size(), "block_size": 32, "n_layer": 2, "n_head": 4,
           "n_embd": 32, "dropout": 0.0}
    return randomised(Encoder(EncoderConfig(**{**cfg, **kw})))


def ids(vocab: int, shape=(3, 32)) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kw", [{}, {"tie_embeddings": False, "activation": "relu", "mlp_ratio": 2}])
def test_gpt_exports_as_gpt2_with_the_same_logits(tmp_path, kw):
    net = small_gpt(**kw)
    report = save_hf(Source(net, {"arch": "gpt"}, char_tokenizer().to_str()), tmp_path)
    assert report["architecture"] == "GPT2LMHeadModel" and "model.safetensors" in report["files"]
    assert not list(tmp_path.glob("*.bin"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == "GPT2LMHeadModel"
    x = ids(net.config.vocab_size)
    with torch.no_grad():
        diff = (hf(input_ids=x).logits - net(x)).abs().max().item()
    assert diff < ATOL, diff
    assert net(x).abs().max() > 0.5  # the logits are not all ~0, so the comparison means something
    # The tokenizer loads in transformers and gives our ids.
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    text = "hello, world.\n"
    assert fast(text)["input_ids"] == char_tokenizer().encode(text).ids
    assert transformers.AutoTokenizer.from_pretrained(tmp_path).eos_token == "<|endoftext|>"


def test_encoder_exports_as_bert_for_masked_lm_and_bert_model(tmp_path):
    net = small_encoder(type_vocab_size=0)  # no segments: exported as one all-zero segment row
    assert save_hf(Source(net, {"arch": "bert"}, None), tmp_path)["architecture"] == "BertForPreTraining"
    x = ids(net.config.vocab_size)
    mask = torch.ones_like(x)
    mask[1, 20:] = 0  # padding is masked the same way
    mlm = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    base = transformers.AutoModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        h = net.features(x, mask)
        assert (mlm(input_ids=x, attention_mask=mask).logits - net.mlm_head(h)).abs().max() < ATOL
        assert (base(input_ids=x, attention_mask=mask).pooler_output - net.pool(h)).abs().max() < ATOL


@pytest.mark.parametrize("make", [small_gpt, small_encoder])
def test_ours_to_hf_folder_to_ours_is_exact(tmp_path, make):
    net = make()
    save_hf(Source(net, {"arch": "gpt" if make is small_gpt else "bert"}, char_tokenizer().to_str()), tmp_path)
    back = load_source(tmp_path)  # a folder with config.json is read as an HF model
    assert type(back.network) is type(net) and back.tokenizer_json == char_tokenizer().to_str()
    x = ids(net.config.vocab_size)
    with torch.no_grad():
        assert torch.equal(back.network(x), net(x))
    for name, t in net.state_dict().items():
        assert torch.equal(back.network.state_dict()[name], t), name


def test_features_gpt2_cannot_represent_are_refused_by_name(tmp_path):
    net = small_gpt(position="rotary", bias=False)
    with pytest.raises(ConfigError, match=r"as GPT-2: model.position=rotary .*; model.bias=false"):
        save_hf(Source(net, {"arch": "gpt"}, None), tmp_path)
    with pytest.raises(ConfigError, match="as BERT: model.pre_norm=true"):
        save_hf(Source(small_encoder(pre_norm=True), {"arch": "bert"}, None), tmp_path)
    assert not (tmp_path / "config.json").exists()


def test_a_pickle_only_folder_is_refused_without_unpickling(tmp_path):
    transformers.GPT2Config(vocab_size=31, n_positions=8, n_embd=8, n_layer=1, n_head=2).save_pretrained(tmp_path)

    class Bomb:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    torch.save({"x": Bomb()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ConfigError, match=r"only pickle weights \(pytorch_model.bin\)"):
        load_hf(tmp_path)


def test_hf_models_own_folders_import_too(tmp_path):
    """A folder transformers wrote itself (GPT2LMHeadModel, tied head left out of the file; a bare
    BertModel, no MLM head: ours keeps its initialisation and says so)."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=31, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained(tmp_path / "gpt2")
    ours = load_hf(tmp_path / "gpt2").network
    x = ids(31, (2, 16))
    with torch.no_grad():
        assert (ours(x) - hf(input_ids=x).logits).abs().max() < ATOL
    bert = transformers.BertModel(transformers.BertConfig(vocab_size=31, hidden_size=16, num_hidden_layers=1,
                                                          num_attention_heads=2, intermediate_size=32,
                                                          max_position_embeddings=16))
    bert.save_pretrained(tmp_path / "bert")
    src = load_hf(tmp_path / "bert")
    assert "mlm_head.dense.weight" in src.model["_left_at_init"] and "blocks.0.attn.q.weight" not in src.model[
        "_left_at_init"]
    with torch.no_grad():
        assert (src.network.features(x) - bert.eval()(input_ids=x).last_hidden_state).abs().max() < ATOL


def test_an_imported_folder_becomes_a_pretrained_checkpoint(tmp_path):
    net = small_gpt()
    save_hf(Source(net, {"arch": "gpt"}, char_tokenizer().to_str()), tmp_path / "hf")
    write_checkpoint(load_source(tmp_path / "hf"), tmp_path / "model.ckpt")
    pretrained = read_pretrained(str(tmp_path / "model.ckpt"))  # what finetune's pretrained= reads
    assert pretrained["model"]["arch"] == "gpt" and pretrained["tokenizer_json"] == char_tokenizer().to_str()
    module = load_module(tmp_path / "model.ckpt")  # what generate / evaluate / export read
    assert isinstance(module, CausalLMModule)
    x = ids(net.config.vocab_size)
    with torch.no_grad():
        assert torch.equal(module.eval().network(x), net(x))
