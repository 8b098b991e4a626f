"""Continual pretraining: `pretrained=` (weights only), replay of the old corpus, layer freezing.

Corpus A (the "old" one) is a slice of tiny-shakespeare, corpus B (the "new" one) Debian package
descriptions; both are small files written here so that every run takes seconds.
"""

import gzip
import itertools

import lightning as L
import numpy as np
import pytest
import torch

from conftest import DATA, SHAKESPEARE, make_cfg, require_data
from lmpretrain.errors import ConfigError, find_user_error
from lmpretrain.models import build_network
from lmpretrain.optim import cosine_with_warmup
from lmpretrain.optim.freeze import freeze_parameters
from lmpretrain.train import build, train

SMALL = ["debug=fast", "model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=32",
         "data.batch_size=4", "scheduler.warmup_steps=2"]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    require_data("tinyshakespeare.txt", "debian_packages.train.jsonl.gz")
    folder = tmp_path_factory.mktemp("corpora")
    a = folder / "a.txt"
    a.write_text(SHAKESPEARE.read_text()[:40_000])
    b = folder / "b.jsonl"
    with gzip.open(DATA / "debian_packages.train.jsonl.gz", "rt") as f:
        b.write_text("".join(itertools.islice(f, 300)))
    return a, b


def on_a(a) -> list[str]:
    return [f"data.files=[{a}]", "data.split=tail", "data.val_fraction=0.1"]


def on_b(b) -> list[str]:
    return [f"data.files=[{b}]", "data.field=description", "data.split=hash", "data.val_fraction=0.2"]


@pytest.fixture(scope="module")
def pretrained(corpora, tmp_path_factory):
    """A char GPT trained 4 steps on A: (last.ckpt, its final val/loss on A)."""
    out = tmp_path_factory.mktemp("pretrain")
    metrics = train(make_cfg(out, [*SMALL, *on_a(corpora[0])]))
    return out / "checkpoints" / "last.ckpt", metrics["val/loss"]


class Recorder(L.Callback):
    """Learning rate per optimizer step, and the state the run starts from."""

    def __init__(self):
        self.lr, self.start = {}, None

    def on_train_start(self, trainer, pl_module):
        opt = trainer.optimizers[0]
        self.start = {"step": trainer.global_step, "optimizer_state": len(opt.state),
                      "weights": {k: v.clone() for k, v in pl_module.network.state_dict().items()},
                      "params_in_optimizer": {id(p) for g in opt.param_groups for p in g["params"]}}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lr[trainer.global_step] = optimizer.param_groups[0]["lr"]


def fit(cfg, ckpt_path=None):
    datamodule, module, trainer = build(cfg)
    rec = Recorder()
    trainer.callbacks.append(rec)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    return rec, module, datamodule, trainer


def network_state(ckpt) -> dict[str, torch.Tensor]:
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    return {k.removeprefix("network."): v for k, v in state.items() if k.startswith("network.")}


def test_pretrained_starts_from_exactly_the_checkpoint(tmp_path, corpora, pretrained):
    """Step-0 validation on the old corpus gives the checkpoint's own val/loss; the network config
    (model.* overrides are ignored) and the tokenizer are the checkpoint's."""
    ckpt, val_loss = pretrained
    cfg = make_cfg(tmp_path, [*SMALL, *on_a(corpora[0]), f"pretrained={ckpt}", "model.n_layer=3",
                              "trainer.max_steps=0"])
    metrics = train(cfg)
    assert metrics["val/loss"] == pytest.approx(val_loss, rel=1e-6)
    datamodule, module, _ = build(make_cfg(tmp_path / "b", [*SMALL, *on_b(corpora[1]), f"pretrained={ckpt}"]))
    theirs = network_state(ckpt)
    ours = module.network.state_dict()
    assert sorted(ours) == sorted(theirs) and module.network.config.n_layer == 2
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    tokenizer_json = torch.load(ckpt, weights_only=True)["tokenizer_json"]
    assert datamodule.tokenizer.to_str() == tokenizer_json == module.tokenizer_json
    # B read with A's char tokenizer: Debian's digits and ()/*" are not in it
    assert 0.001 < datamodule.unk_fraction("train") < 0.05


def test_pretrained_has_fresh_optimizer_schedule_and_data(tmp_path, corpora, pretrained):
    ckpt, _ = pretrained
    rec, _, datamodule, trainer = fit(make_cfg(tmp_path, [*SMALL, *on_b(corpora[1]), f"pretrained={ckpt}",
                                                               "trainer.max_steps=3", "scheduler.max_steps=3"]))
    assert rec.start["step"] == 0 and rec.start["optimizer_state"] == 0
    assert all(torch.equal(v, network_state(ckpt)[k]) for k, v in rec.start["weights"].items())
    assert sorted(rec.lr) == [0, 1, 2]
    for step, lr in rec.lr.items():  # warmup again from step 0, not the checkpoint's schedule position
        assert lr == pytest.approx(cosine_with_warmup(step, lr=1e-3, warmup_steps=2, max_steps=3, min_lr=1e-4),
                                   rel=1e-12)
    assert datamodule.train_batches_seen == 3 and trainer.global_step == 3


def test_pretrained_with_ckpt_path_resumes_the_continual_run(tmp_path, corpora, pretrained):
    """Both given: ckpt_path (an interrupted continual run) wins for weights, step and optimizer."""
    ckpt, _ = pretrained
    first = [*SMALL, *on_b(corpora[1]), f"pretrained={ckpt}", "scheduler.max_steps=6"]
    fit(make_cfg(tmp_path, first))  # 4 steps
    interrupted = tmp_path / "interrupted.ckpt"
    (tmp_path / "checkpoints" / "last.ckpt").rename(interrupted)
    rec, _, datamodule, trainer = fit(make_cfg(tmp_path, [*first, "trainer.max_steps=6"]), ckpt_path=str(interrupted))
    assert sorted(rec.lr) == [4, 5] and trainer.global_step == 6 and datamodule.train_batches_seen == 6
    assert all(torch.equal(v, network_state(interrupted)[k]) for k, v in rec.start["weights"].items())
    assert not all(torch.equal(v, network_state(ckpt)[k]) for k, v in rec.start["weights"].items())


def blocks_from(batches, token_file, dtype, block_size=32) -> list[bool]:
    """For each block of `batches`: is it a window of `token_file` (None: no file)?"""
    tokens = np.fromfile(token_file, dtype=dtype) if token_file else np.zeros(0, dtype=dtype)
    windows = {tokens[i:i + block_size].tobytes() for i in range(len(tokens) - block_size + 1)}
    return [ids.numpy().astype(dtype).tobytes() in windows for b in batches for ids in b["input_ids"]]


@pytest.mark.parametrize("fraction", [0.0, 0.25])
def test_replay_fraction_of_training_blocks(tmp_path, corpora, pretrained, fraction):
    a, b = corpora
    cfg = make_cfg(tmp_path, [*SMALL, *on_b(b), f"pretrained={pretrained[0]}", f"data.replay.files=[{a}]",
                              f"data.replay.fraction={fraction}", "data.replay.split=tail"])
    datamodule, _, _ = build(cfg)
    datamodule.trainer = L.Trainer(logger=False, enable_checkpointing=False)
    batches = list(itertools.islice(datamodule.train_dataloader(), 300))  # 1,200 blocks
    dtype = datamodule.dtype
    from_a = blocks_from(batches, datamodule.replay_files.get("train"), dtype)
    from_b = blocks_from(batches, datamodule.token_files["train"], dtype)
    assert all(x != y for x, y in zip(from_a, from_b))  # every block is from exactly one corpus
    n = len(from_a)
    assert abs(sum(from_a) / n - fraction) <= 4 * (fraction * (1 - fraction) / n) ** 0.5
    assert all(blocks_from(list(datamodule.val_dataloader()), datamodule.token_files["val"], dtype))  # B only


def user_error(overrides, tmp_path) -> str:
    """The one line the entrypoint would print (Hydra wraps errors raised in a constructor)."""
    with pytest.raises(Exception) as e:
        build(make_cfg(tmp_path, overrides))
    error = find_user_error(e.value)
    assert isinstance(error, ConfigError), e.value
    assert "\n" not in str(error)
    return str(error)


def test_replay_config_errors(tmp_path, corpora):
    b = on_b(corpora[1])
    assert "data.replay.fraction=1.5 must be in [0, 1)" in user_error([*SMALL, *b, "data.replay.fraction=1.5"], tmp_path)
    assert "needs data.replay.files" in user_error([*SMALL, *b, "data.replay.fraction=0.2"], tmp_path)


def test_frozen_parameters_stay_fixed_and_are_not_optimized(tmp_path, corpora, pretrained):
    ckpt, _ = pretrained
    rec, module, _, _ = fit(make_cfg(tmp_path, [*SMALL, *on_b(corpora[1]), f"pretrained={ckpt}",
                                                "freeze.embeddings=true", "freeze.layers=1", "optimizer.lr=1e-2"]))
    frozen_prefixes = ("tok_emb.", "pos_emb.", "lm_head.", "blocks.0.")  # lm_head is tied to tok_emb
    after = module.network.state_dict()
    before = rec.start["weights"]
    frozen = [k for k in after if k.startswith(frozen_prefixes)]
    trained = [k for k in after if not k.startswith(frozen_prefixes)]
    assert frozen and trained
    assert all(torch.equal(after[k], before[k]) for k in frozen)
    assert all(not torch.equal(after[k], before[k]) for k in trained)
    named = dict(module.network.named_parameters())
    in_optimizer = rec.start["params_in_optimizer"]
    assert all(id(named[k]) not in in_optimizer and not named[k].requires_grad for k in frozen if k in named)
    assert {id(named[k]) for k in trained if k in named} == in_optimizer


def test_freeze_spec(tmp_path):
    net = build_network({"arch": "gpt", "vocab_size": 11, "block_size": 8, "n_layer": 3, "n_head": 2, "n_embd": 8})
    names = freeze_parameters(net, layers=[0, 2])
    assert names and all(n.startswith(("blocks.0.", "blocks.2.")) for n in names)
    assert all(p.requires_grad for p in net.blocks[1].parameters()) and net.tok_emb.weight.requires_grad
    with pytest.raises(ConfigError, match=r"freeze.layers=4 is out of range for a network of 3 blocks"):
        freeze_parameters(net, layers=4)
    with pytest.raises(ConfigError, match="out of range"):
        freeze_parameters(net, layers=[3])
    assert freeze_parameters(build_network({"arch": "gpt", "vocab_size": 11, "block_size": 8, "n_layer": 1,
                                            "n_head": 2, "n_embd": 8})) == []


def fake_checkpoint(path, model: dict, state: dict, tokenizer_json: str) -> None:
    torch.save({"state_dict": {f"network.{k}": v for k, v in state.items()}, "hyper_parameters": {"model": model},
                "tokenizer_json": tokenizer_json}, path)


def test_checkpoint_of_another_family_is_one_error_line(tmp_path, corpora, pretrained):
    ckpt, _ = pretrained
    tokenizer_json = torch.load(ckpt, weights_only=True)["tokenizer_json"]
    vocab = network_state(ckpt)["tok_emb.weight"].shape[0]
    bert = {"arch": "bert", "vocab_size": vocab, "block_size": 32, "n_layer": 1, "n_head": 2, "n_embd": 16}
    fake_checkpoint(tmp_path / "bert.ckpt", bert, build_network(bert).state_dict(), tokenizer_json)
    with pytest.raises(ConfigError) as e:
        build(make_cfg(tmp_path / "a", [*SMALL, *on_b(corpora[1]), f"pretrained={tmp_path / 'bert.ckpt'}"]))
    assert "\n" not in str(e.value)
    assert str(e.value).startswith(f"pretrained={tmp_path / 'bert.ckpt'} holds a bert network")
    assert "needs a GPT network" in str(e.value)
    # a fine-tuned GPT (its network holds a task head) is not a pretraining network either
    gpt = torch.load(ckpt, weights_only=True)["hyper_parameters"]["model"]
    tuned = {**network_state(ckpt), "task_head.1.weight": torch.zeros(2, 32)}
    fake_checkpoint(tmp_path / "tuned.ckpt", dict(gpt), tuned, tokenizer_json)
    with pytest.raises(ConfigError, match=r"does not fit objective CausalLMModule.*unexpected \['task_head.1.weight'\]"):
        build(make_cfg(tmp_path / "b", [*SMALL, *on_b(corpora[1]), f"pretrained={tmp_path / 'tuned.ckpt'}"]))


def test_continual_experiment_composes_with_replay_from_shakespeare(tmp_path):
    cfg = make_cfg(tmp_path, ["experiment=continual_char_debian"])
    assert cfg.data.files == ["debian_packages.train.jsonl.gz"] and cfg.pretrained is None
    assert cfg.data.replay.files == ["tinyshakespeare.txt"] and cfg.data.replay.fraction == 0.2
    assert cfg.data.replay.split == "tail" and cfg.data.replay.val_fraction == 0.1  # as conf/data/tinyshakespeare


@pytest.mark.slow
def test_replay_reduces_forgetting_of_the_old_corpus(tmp_path, corpora):
    """Pretrain on A, continue on B with and without 25% replay of A: both learn B, and replay keeps
    A's val/loss closer to where pretraining left it (bench/continual.py measures the full-size case)."""
    a, b = corpora
    model = ["debug=fast", "model.n_layer=2", "model.n_head=2", "model.n_embd=64", "model.block_size=32",
             "data.batch_size=8", "callbacks.samples=null", "callbacks.curves=null", "trainer.limit_val_batches=null"]
    steps = ["trainer.max_steps={n}", "trainer.val_check_interval={n}", "scheduler.warmup_steps=20", "optimizer.lr=3e-3"]
    at = [s.format(n=300) for s in steps]
    train(make_cfg(tmp_path / "pre", [*model, *on_a(a), *at]))
    ckpt = tmp_path / "pre" / "checkpoints" / "last.ckpt"

    def val(weights, data) -> float:
        return train(make_cfg(tmp_path / "eval", [*model, *data, f"pretrained={weights}", "trainer.max_steps=0"]))["val/loss"]

    before_a, before_b = val(ckpt, on_a(a)), val(ckpt, on_b(b))
    after = {}
    for fraction in (0.0, 0.25):
        out = tmp_path / f"replay{fraction}"
        train(make_cfg(out, [*model, *on_b(b), f"pretrained={ckpt}", *[s.format(n=150) for s in steps],
                             f"data.replay.files=[{a}]", f"data.replay.fraction={fraction}"]))
        weights = out / "checkpoints" / "last.ckpt"
        after[fraction] = val(weights, on_a(a)), val(weights, on_b(b))
    forgetting = {f: a_loss - before_a for f, (a_loss, _) in after.items()}
    assert all(b_loss < before_b - 0.3 for _, b_loss in after.values()), (before_b, after)
    assert forgetting[0.0] > 0.1 and forgetting[0.25] < forgetting[0.0] / 2, (before_a, forgetting)
