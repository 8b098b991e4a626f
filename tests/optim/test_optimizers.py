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
