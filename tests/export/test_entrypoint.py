"""`python -m lmpretrain.export`: its error path (one `error:` line, exit 2), the output folder it
refuses, ONNX files checked with onnxruntime, and int8 / pruning of a char model trained here on
tiny-shakespeare, scored on the held-out tail of the text."""

import json
import math
import subprocess
import sys

import pytest
import torch

from conftest import make_cfg, require_data
from lmpretrain.checkpoints import load_module
from lmpretrain.errors import ConfigError
from lmpretrain.export.convert import MARKER, claim_output, export, load_int8
from lmpretrain.export.onnx import check_onnx, export_onnx, graph_for
from lmpretrain.export.scores import compare, forward_fn, heldout_blocks
from lmpretrain.export.source import Source
from lmpretrain.models import GPT, GPTConfig
from lmpretrain.paths import data_root, repo_root
from lmpretrain.tasks.classification import SequenceClassificationModule
from lmpretrain.train import train


def test_missing_checkpoint_is_one_error_line_and_exit_2(tmp_path):
    missing = tmp_path / "nope.ckpt"
    proc = subprocess.run([sys.executable, "-m", "lmpretrain.export", f"ckpt_path={missing}", "to=int8",
                           f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, cwd=repo_root(),
                          timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [(f"error: ckpt_path={missing} does not exist; pass a .ckpt from logs/<run>/.../checkpoints/ "
                      f"or a folder with an HF model (config.json + model.safetensors)")]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_a_foreign_non_empty_output_folder_is_refused(tmp_path):
    (tmp_path / "theirs.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty and was not written by lmpretrain.export"):
        claim_output(tmp_path)
    assert (tmp_path / "theirs.txt").read_text() == "keep me"
    ours = claim_output(tmp_path / "new")
    (ours / "model.onnx").write_text("x")
    assert claim_output(ours) == ours and (ours / MARKER).is_file()  # an earlier export's: reused


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gpt", "bert_classifier", "gpt_classifier"])
def test_onnx_matches_pytorch_in_onnxruntime(tmp_path, kind):
    """Dynamic batch and sequence: onnxruntime is run on shapes other than the export's example,
    with padded rows for the classifiers (BERT pools [CLS], GPT the last real token)."""
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    size = {"vocab_size": 67, "block_size": 32, "n_layer": 2, "n_head": 4, "n_embd": 32}
    if kind == "gpt":
        src = Source(GPT(GPTConfig(**size)).eval(), {"arch": "gpt", **size}, None)
    else:
        arch = kind.split("_")[0]
        module = SequenceClassificationModule(model={"arch": arch, **size, "dropout": 0.0}, labels=["a", "b", "c"])
        src = Source(module.network.eval(), {"arch": arch, **size}, None, module.eval())
    graph = graph_for(src)
    export_onnx(graph, tmp_path / "model.onnx")
    check = check_onnx(graph, tmp_path / "model.onnx")
    assert check["max_abs_diff"] < 1e-4
    assert check["shapes"] == [[1, 1], [3, 7], [2, 32]]


@pytest.fixture(scope="module")
def char_model(tmp_path_factory):
    """gpt_tiny trained 150 steps on tiny-shakespeare (char tokenizer): about 13 s here."""
    require_data("tinyshakespeare.txt")
    out = tmp_path_factory.mktemp("char")
    train(make_cfg(out, ["experiment=shakespeare_char", "debug=fast", "trainer.accelerator=cpu",
                         "trainer.max_steps=150", "trainer.val_check_interval=150", "trainer.limit_val_batches=1",
                         "scheduler.warmup_steps=10", "optimizer.lr=3e-3"]))
    return out / "checkpoints" / "last.ckpt"


def run_export(tmp_path, ckpt, *overrides):
    return export(make_cfg(tmp_path, [f"ckpt_path={ckpt}", *overrides, "heldout.max_blocks=32"],
                           config_name="export"))


@pytest.mark.slow
def test_int8_keeps_the_held_out_perplexity_of_a_trained_model(tmp_path, char_model):
    report = run_export(tmp_path, char_model, "to=int8")
    assert report["kind"] == "causal_lm" and report["heldout"]["blocks"] == [32, 65]
    ppl = report["ppl"]
    assert ppl["before"] < 14  # trained: uniform over the 65 characters would be 65
    assert abs(ppl["after"] / ppl["before"] - 1) < 0.02  # int8 costs < 2% perplexity here
    assert report["top1_agreement"] > 0.95
    assert report["size_mb"]["after"] < 0.35 * report["size_mb"]["before"]
    assert json.loads((tmp_path / "int8" / "report.json").read_text()) == report
    # The written file rebuilds the int8 network: the same held-out perplexity as the report.
    net, tokenizer_json = load_int8(tmp_path / "int8" / "model_int8.pt")
    blocks = heldout_blocks(data_root() / "tinyshakespeare.txt", tokenizer_json, 64, 0.1, 32)
    again = compare(forward_fn(net), forward_fn(net), blocks, causal_lm=True)
    assert again["ppl"]["after"] == pytest.approx(ppl["after"], rel=1e-5)


@pytest.mark.slow
def test_pruning_a_trained_model_reports_sparsity_size_and_perplexity(tmp_path, char_model):
    half = run_export(tmp_path / "a", char_model, "to=pruned", "prune.amount=0.5", "prune.scope=layer")
    assert half["sparsity"]["block_linear_sparsity"] == 0.5  # 4 x C^2 and 4 x 4C^2 weights: exact halves
    assert half["size_mb"]["after"] == half["size_mb"]["before"]  # zeros stay dense (README)
    ppl = half["ppl"]
    assert ppl["after"] > ppl["before"] and math.isfinite(ppl["after"])
    heavy = run_export(tmp_path / "b", char_model, "to=pruned", "prune.amount=0.9", "prune.scope=layer")
    assert heavy["ppl"]["after"] > ppl["after"]  # more pruning, more damage
    # model.ckpt is an ordinary checkpoint of the pruned weights (generate / evaluate / finetune read it).
    module = load_module(tmp_path / "a" / "pruned" / "model.ckpt")
    fc = module.network.blocks[0].mlp.fc.weight
    assert int((fc == 0).sum()) == fc.numel() // 2
