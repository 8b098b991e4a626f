"""`python -m lmpretrain.inspect`: attention maps, top tokens per position, the bias probe."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import make_cfg
from lmpretrain.inspect import capture_attention, inspect_checkpoint, sentence_score
from lmpretrain.models.blocks import Attention
from lmpretrain.train import train

FAST = ["debug=fast", "trainer.max_steps=2"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    gpt = tmp_path_factory.mktemp("gpt")
    train(make_cfg(gpt, ["experiment=shakespeare_char", *FAST]))
    bert = tmp_path_factory.mktemp("bert")
    train(make_cfg(bert, ["experiment=bert_mlm_tiny", *FAST, "data.batch_size=4"]))
    return gpt / "checkpoints" / "last.ckpt", bert / "checkpoints" / "last.ckpt"


def _cfg(tmp_path, ckpt, *overrides):
    return make_cfg(tmp_path, [f"ckpt={ckpt}", *overrides], config_name="inspect")


def test_captured_weights_reproduce_the_attention_output():
    """weights @ v, projected, equals what the fused kernel computed: the maps are the model's."""
    torch.manual_seed(0)
    att = Attention(32, 4, dropout=0.0, bias=True).eval()
    x = torch.randn(2, 7, 32)
    with torch.no_grad(), capture_attention(att) as maps:
        y = att(x, causal=True)
    ((_, w),) = maps
    assert w.shape == (2, 4, 7, 7)
    assert torch.allclose(w.sum(-1), torch.ones(2, 4, 7))
    assert (w.triu(1) == 0).all()  # causal: nothing attends to later tokens
    v = att._heads(att.v(x))
    expected = att.proj((w @ v).transpose(1, 2).reshape(2, 7, 32))
    assert torch.allclose(y, expected, atol=1e-5)
    assert torch.nn.functional.scaled_dot_product_attention.__name__ == "scaled_dot_product_attention"  # restored


@pytest.mark.slow
def test_inspect_gpt(checkpoints, tmp_path):
    gpt, _ = checkpoints
    result = inspect_checkpoint(_cfg(tmp_path, gpt, "text=ROMEO: hi", "top_k=3"))
    assert [p.name for p in result["attention"]] == ["layer0.png", "layer1.png", "layer2.png", "layer3.png"]
    top = result["top_tokens"]
    assert [t["token"] for t in top] == list("ROMEO: hi")
    assert all(len(t["top"]) == 3 and t["top"][0][1] >= t["top"][1][1] >= t["top"][2][1] for t in top)
    assert (tmp_path / "bias.md").is_file() and len(result["bias"]) == 5
    row = result["bias"][0]
    assert row["gap"] == pytest.approx(abs(row["He"] - row["She"]), abs=2e-4)


@pytest.mark.slow
def test_sentence_score_is_the_sum_of_next_token_log_probs(checkpoints):
    from tokenizers import Tokenizer

    from lmpretrain.checkpoints import load_module

    module = load_module(checkpoints[0])
    net, tok = module.network.eval(), Tokenizer.from_str(module.tokenizer_json)
    ids = tok.encode("abc", add_special_tokens=False).ids
    with torch.no_grad():
        logp = net(torch.tensor([ids])).log_softmax(-1)[0]
    assert sentence_score(net, tok, "abc", None) == pytest.approx(float(logp[0, ids[1]] + logp[1, ids[2]]), abs=1e-5)


@pytest.mark.slow
def test_inspect_masked_lm(checkpoints, tmp_path):
    _, bert = checkpoints
    result = inspect_checkpoint(_cfg(tmp_path, bert, "text='a small [MASK] for the shell'", "top_k=2"))
    tokens = [t["token"] for t in result["top_tokens"]]
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and "[MASK]" in tokens
    assert len(result["attention"]) == 2  # bert_tiny: 2 layers
    assert all(r["preferred"] in ("He", "She") for r in result["bias"])


@pytest.mark.slow
def test_inspect_errors_are_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "lmpretrain.inspect", f"ckpt={tmp_path}/none.ckpt",
                        f"hydra.run.dir={tmp_path}/run"], check=False, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: ckpt=") and "Traceback" not in r.stderr
