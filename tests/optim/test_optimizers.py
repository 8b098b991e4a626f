"""Every optimizer config builds over the shared weight-decay groups and steps as torch's does."""

import pytest
import torch
import yaml

from lmpretrain.config import CONF_DIR
from lmpretrain.errors import ConfigError
from lmpretrain.models import build_network
from lmpretrain.optim import build_optimizer

OPTIMIZERS = sorted(p.stem for p in (CONF_DIR / "optimizer").glob("*.yaml"))
# bias=False: a key bias gets a zero gradient (softmax ignores it), whose rounding noise Adam amplifies.
TINY = dict(arch="gpt", vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8, bias=False)


def network():
    torch.manual_seed(0)
    return build_network(TINY)


def test_all_issue_optimizers_have_configs():
    assert OPTIMIZERS == ["adagrad", "adam", "adamw", "rmsprop", "sgd"]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_config_builds_two_decay_groups(name):
    cfg = yaml.safe_load((CONF_DIR / "optimizer" / f"{name}.yaml").read_text())
    net = network()
    opt = build_optimizer(net, **{**cfg, "weight_decay": 0.1})
    assert type(opt).__name__.lower() == name
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in net.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == sorted(
        n for n, p in net.named_parameters() if n.endswith("weight") and p.ndim == 2 and "emb" not in n)
    n_params = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_params == sum(p.numel() for p in net.parameters())  # tied head counted once


def test_adamw_decays_only_the_decay_group():
    """With zero gradients AdamW's update is pure decoupled decay: w <- w * (1 - lr * wd)."""
    net = network()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = build_optimizer(net, "adamw", lr=0.1, weight_decay=0.5)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in net.named_parameters():
        factor = 0.95 if (n.endswith("weight") and p.ndim == 2 and "emb" not in n) else 1.0
        torch.testing.assert_close(p.detach(), before[n] * factor, rtol=0, atol=1e-7, msg=n)


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd", "adagrad"])
def test_fused_kernel_matches_loop(name):
    """fused=true (CPU fused kernels exist for these) follows the same trajectory as the plain loop."""
    nets = [network(), network()]
    opts = [build_optimizer(nets[0], name, lr=1e-2, weight_decay=0.1, fused=True),
            build_optimizer(nets[1], name, lr=1e-2, weight_decay=0.1, fused=False, foreach=False)]
    assert opts[0].defaults["fused"] is True
    x = torch.randint(0, 11, (2, 8))
    for _ in range(3):
        for net, opt in zip(nets, opts):
            net(x).logsumexp(-1).mean().backward()
            opt.step()
            opt.zero_grad()
    for (n, a), b in zip(nets[0].named_parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=n)


def test_fused_auto_on_cpu_fuses_adam_only_and_bad_names_fail():
    """auto fuses AdamW / Adam on plain CPU tensors (faster there) and leaves SGD and Adagrad to
    torch's default loop."""
    for name, fused in (("adamw", True), ("adam", True), ("sgd", False), ("adagrad", False)):
        opt = build_optimizer(network(), name, fused="auto")
        assert bool(opt.defaults.get("fused")) is fused, name
    with pytest.raises(ConfigError, match="optimizer.fused=true: torch has no fused rmsprop"):
        build_optimizer(network(), "rmsprop", fused=True)
    with pytest.raises(ConfigError, match="optimizer.name='lion' is unknown"):
        build_optimizer(network(), "lion")


ENCODER = {"arch": "bert", "vocab_size": 11, "block_size": 8, "n_layer": 3, "n_head": 2, "n_embd": 8}


def test_layer_decay_gives_each_block_its_rate_and_the_first_adam_step_moves_it_by_that_much():
    """layer_decay=0.5 over 3 blocks: heads at lr, block 2 at lr/2, block 1 lr/4, block 0 lr/8, the
    embeddings lr/16. Adam's first step moves every weight by its group's rate (|g| / (|g| + eps), eps ~ 0)."""
    torch.manual_seed(0)
    net = build_network(ENCODER)
    opt = build_optimizer(net, "adamw", lr=0.1, weight_decay=0.0, layer_decay=0.5, fused=False, eps=1e-20)
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    expected = {"tok_emb.weight": 0.1 / 16, "seg_emb.weight": 0.1 / 16, "emb_norm.bias": 0.1 / 16,
                "blocks.0.attn.q.weight": 0.1 / 8, "blocks.1.mlp.fc.weight": 0.1 / 4,
                "blocks.2.norm2.weight": 0.1 / 2, "mlm_head.dense.weight": 0.1, "mlm_head.bias": 0.1}
    params = dict(net.named_parameters())
    assert set(expected) <= set(params)
    for name, lr in expected.items():
        assert group_of[id(params[name])]["lr"] == pytest.approx(lr), name
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(net.parameters()))
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    x = torch.randint(0, 11, (2, 8))
    net.mlm_head(net.features(x)).logsumexp(-1).mean().backward()
    opt.step()
    for name, lr in expected.items():
        moved = (params[name].detach() - before[name]).abs().max().item()
        assert moved == pytest.approx(lr, rel=1e-3), name


def test_layer_decay_keeps_weight_decay_off_norms_and_embeddings_and_scales_with_the_schedule():
    from lmpretrain.optim import build_scheduler

    net = build_network(ENCODER)
    opt = build_optimizer(net, "adamw", lr=1e-2, weight_decay=0.1, layer_decay=0.8)
    for g in opt.param_groups:
        names = {n for n, p in net.named_parameters() if any(p is q for q in g["params"])}
        decayed = {n for n in names if n.endswith("weight") and dict(net.named_parameters())[n].ndim == 2
                   and "emb" not in n}
        assert (g["weight_decay"] == 0.1) == bool(decayed) and (not decayed or decayed == names), names
    scheduler = build_scheduler(opt, "linear", warmup_steps=0, max_steps=4)
    for step in range(3):
        for g in opt.param_groups:  # linear decay: factor 1 - step / 4, the same for every depth
            assert g["lr"] == pytest.approx(1e-2 * 0.8 ** g["layer_depth"] * (1 - step / 4)), (step, g["layer_depth"])
        opt.step()
        scheduler.step()


def test_layer_decay_on_a_tied_gpt_puts_the_head_with_the_embedding_and_refuses_an_encoder_decoder():
    net = build_network({**TINY, "n_layer": 2, "tie_embeddings": True})
    opt = build_optimizer(net, "adamw", lr=1.0, layer_decay=0.5)
    (group,) = [g for g in opt.param_groups if any(p is net.tok_emb.weight for p in g["params"])]
    assert group["lr"] == 0.125 and net.lm_head.weight is net.tok_emb.weight
    t5 = build_network({"arch": "t5", "vocab_size": 11, "block_size": 8, "n_layer": 1, "n_head": 2, "n_embd": 8})
    with pytest.raises(ConfigError, match="layer_decay needs a network with one stack of blocks"):
        build_optimizer(t5, "adamw", layer_decay=0.5)


@pytest.mark.parametrize("value", [0, 1.5, -0.1, "high"])
def test_bad_layer_decay_is_one_clear_error(value):
    from lmpretrain.optim import check_optimizer_config

    with pytest.raises(ConfigError, match="optimizer.layer_decay"):
        check_optimizer_config({"name": "adamw", "lr": 1e-3, "layer_decay": value})


def test_head_only_steps_trains_the_heads_first_then_every_layer_on_the_shared_schedule():
    """head_only_steps=3: for steps 0-2 every group below the heads has lr 0 and its weights stay as
    they are while the heads move; from step 3 on every group follows the linear schedule."""
    from lmpretrain.optim import build_scheduler

    torch.manual_seed(0)
    net = build_network(ENCODER)
    opt = build_optimizer(net, "adamw", lr=1e-2, weight_decay=0.1, head_only_steps=3)
    assert {g["layer_depth"] for g in opt.param_groups} == {0, 1, 2, 3, 4}
    scheduler = build_scheduler(opt, "linear", warmup_steps=0, max_steps=10)
    x = torch.randint(0, 11, (2, 8))
    start = {n: p.detach().clone() for n, p in net.named_parameters()}
    for step in range(5):
        for g in opt.param_groups:
            want = 0.0 if g["layer_depth"] and step < 3 else 1e-2 * (1 - step / 10)
            assert g["lr"] == pytest.approx(want), (step, g["layer_depth"])
        net.mlm_head(net.features(x)).logsumexp(-1).mean().backward()
        opt.step()
        opt.zero_grad()
        scheduler.step()
        if step == 2:
            moved = {n for n, p in net.named_parameters() if not torch.equal(p.detach(), start[n])}
            assert moved and all(n.startswith("mlm_head.") for n in moved), sorted(moved)
    assert not torch.equal(net.blocks[0].attn.q.weight.detach(), start["blocks.0.attn.q.weight"])
    with pytest.raises(ConfigError, match="optimizer.head_only_steps"):
        from lmpretrain.optim import check_optimizer_config

        check_optimizer_config({"name": "adamw", "lr": 1e-3, "head_only_steps": -1})
