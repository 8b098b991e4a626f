"""Adversarial training on the embedding output: FGM, PGD and FreeLB (`adversarial:` in finetune.yaml).

A perturbation `delta` (B, T, C) is added to the token-embedding lookup (`network.tok_emb`, before
positions, segments and the embedding LayerNorm) through a forward hook, so no network changes its
signature. All three methods work per example: a norm below is the norm of one example's whole
(T, C) perturbation, and padding positions are never perturbed.

  fgm     Miyato et al. 2017: one step of size epsilon along the normalised gradient of the clean
          loss, delta = epsilon * g / ||g||_2 (norm=linf: epsilon * sign(g), i.e. FGSM).
          Objective: clean loss + loss at x + delta.
  pgd     Madry et al. 2018: `steps` ascent steps of size alpha (g/||g||_2, or sign(g) for linf),
          each projected back onto the epsilon ball, starting from zero (the first step reuses the
          clean pass). Objective: clean loss + loss at the final delta.
  freelb  Zhu et al. 2020: `steps` ascent steps like pgd, starting from zero or (init_mag > 0) from
          a random point of Zhu et al.'s initial ball; the parameters get the mean of the gradients
          of every step's loss. Objective: mean of the `steps` losses (the last delta is not used,
          as in the paper: K forward passes in all).

Why one returned loss instead of extra backward passes: the perturbation comes from
`torch.autograd.grad(loss, embedding_output)`, which touches no parameter's `.grad` (no
AccumulateGrad node runs, so DDP's gradient hooks do not fire either); delta is then detached,
and `training_step` returns one scalar whose single backward gives the parameters exactly the
gradient the two-backward recipe (backward clean, backward adversarial) accumulates. Lightning's
automatic optimization then handles it unchanged: gradient accumulation divides it like any loss,
DDP sees one forward and one backward per step (several uses of a weight sum into one gradient
before its hook fires), AMP scales it, clipping and logging stay where they are. The price:
the graphs of all passes that enter the objective are alive until that backward (FGM/PGD: 2,
FreeLB: `steps`), i.e. that many times the activation memory of a plain step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields

import torch
from torch import nn

from lmpretrain.errors import ConfigError

METHODS = ("none", "fgm", "pgd", "freelb")
NORMS = ("l2", "linf")


@dataclass(frozen=True)
class AdversarialConfig:
    """`adversarial:` of conf/adversarial/*.yaml. epsilon: radius of the per-example ball (fgm: the
    step itself); alpha, steps: the ascent of pgd/freelb (fgm ignores them); norm: l2 | linf;
    init_mag: freelb's random start (0 = start at zero)."""

    method: str = "none"
    epsilon: float = 0.2
    alpha: float = 0.08
    steps: int = 1
    norm: str = "l2"
    init_mag: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        if self.method not in METHODS:
            problems.append(f"adversarial.method={self.method!r} must be one of {METHODS}")
        if self.norm not in NORMS:
            problems.append(f"adversarial.norm={self.norm!r} must be one of {NORMS}")
        if not self.epsilon >= 0:  # also NaN
            problems.append(f"adversarial.epsilon={self.epsilon} must be >= 0")
        if not self.alpha > 0:
            problems.append(f"adversarial.alpha={self.alpha} must be > 0")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            problems.append(f"adversarial.steps={self.steps!r} must be an integer >= 1")
        if not self.init_mag >= 0:
            problems.append(f"adversarial.init_mag={self.init_mag} must be >= 0")
        if self.init_mag and self.method != "freelb":
            problems.append("adversarial.init_mag is FreeLB's random start; set it with adversarial=freelb only")
        if problems:
            raise ConfigError("; ".join(problems))

    @classmethod
    def from_dict(cls, values: dict | None) -> AdversarialConfig:
        values = dict(values or {})
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"adversarial has unknown keys {unknown}; known: {[f.name for f in fields(cls)]}")
        return cls(**values)

    @property
    def enabled(self) -> bool:
        return self.method != "none"


@dataclass
class AdversarialLoss:
    total: torch.Tensor  # what training_step returns
    clean: torch.Tensor  # loss of the first pass: the unperturbed input (freelb with init_mag: its random start)
    adversarial: torch.Tensor | None = None  # loss at the last perturbation that entered the objective
    delta: torch.Tensor | None = None  # (B, T, C) that perturbation, detached


# -- the geometry: per-example norms, steepest-ascent directions, projection ------------------------
def per_example_norm(x: torch.Tensor, norm: str) -> torch.Tensor:
    """(B, ...) -> (B, 1, ..., 1): each example's L2 or Linf norm, broadcastable against x."""
    flat = x.flatten(1)
    n = flat.norm(dim=1) if norm == "l2" else flat.abs().amax(dim=1)
    return n.view(-1, *[1] * (x.dim() - 1))


def ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The unit-norm steepest-ascent direction per example: g / ||g||_2, or sign(g) (Linf norm 1).
    A zero gradient (and an inf/NaN one, e.g. an fp16 overflow) gives no step."""
    grad = torch.nan_to_num(grad.float(), nan=0.0, posinf=0.0, neginf=0.0)
    if norm == "linf":
        return grad.sign()
    n = per_example_norm(grad, "l2")
    return torch.where(n > 0, grad / n.clamp_min(torch.finfo(grad.dtype).tiny), torch.zeros_like(grad))


def project(delta: torch.Tensor, epsilon: float, norm: str) -> torch.Tensor:
    """delta onto the per-example ball of radius epsilon (L2: rescaled; Linf: clipped)."""
    if norm == "linf":
        return delta.clamp(-epsilon, epsilon)
    n = per_example_norm(delta, "l2")
    return delta * (epsilon / n.clamp_min(torch.finfo(delta.dtype).tiny)).clamp(max=1.0)


def random_start(like: torch.Tensor, mask: torch.Tensor | None, init_mag: float, norm: str) -> torch.Tensor:
    """FreeLB's initial delta (Zhu et al. 2020): uniform in [-1, 1] on real tokens, scaled by
    init_mag / sqrt(real tokens * C) for L2 and by init_mag for Linf."""
    delta = torch.empty_like(like, dtype=torch.float32).uniform_(-1, 1)  # (B, T, C)
    if mask is not None:
        delta = delta * mask
    if norm == "linf":
        return delta * init_mag
    tokens = mask.sum((1, 2), keepdim=True) if mask is not None else torch.full_like(delta[:, :1, :1], like.size(1))
    return delta * init_mag / (tokens.clamp_min(1) * like.size(-1)).sqrt()


# -- the hook ---------------------------------------------------------------------------------------
@dataclass
class Tap:
    output: torch.Tensor | None = None  # the (perturbed) embedding output of the pass, (B, T, C)
    delta: torch.Tensor | None = None  # what was added to it


@contextmanager
def perturbed(embedding: nn.Module, delta: torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None
              ) -> Iterator[Tap]:
    """While active, the first call of `embedding` returns its output + delta (a tensor, or a
    function of the output that makes one) and is recorded in the yielded Tap. Only the first call:
    that is the input text; an encoder-decoder's later decoder lookup stays clean."""
    tap = Tap()

    def hook(module, args, output):
        if tap.output is not None:
            return None
        if not output.requires_grad and torch.is_grad_enabled():  # a frozen embedding: still differentiable here
            output = output.detach().requires_grad_()
        if delta is not None:
            tap.delta = delta(output) if callable(delta) else delta
            output = output + tap.delta.to(output.dtype)
        tap.output = output
        return output

    handle = embedding.register_forward_hook(hook)
    try:
        yield tap
    finally:
        handle.remove()


def _grad(loss: torch.Tensor, tap: Tap, retain: bool) -> torch.Tensor:
    if tap.output is None:
        raise RuntimeError("the loss function never called the token embedding the perturbation hooks into")
    (grad,) = torch.autograd.grad(loss, tap.output, retain_graph=retain)
    return grad


# -- the objectives ---------------------------------------------------------------------------------
def adversarial_loss(cfg: AdversarialConfig, embedding: nn.Module, loss_of: Callable[[], torch.Tensor],
                     attention_mask: torch.Tensor | None = None) -> AdversarialLoss:
    """The training loss under `cfg` for a batch whose forward pass + loss is `loss_of()` (called
    once per pass; it must go through `embedding`). method=none calls it once and nothing else."""
    if not cfg.enabled:
        loss = loss_of()
        return AdversarialLoss(loss, loss)
    mask = attention_mask[..., None].float() if attention_mask is not None else None  # (B, T, 1)

    def step(delta: torch.Tensor | None, grad: torch.Tensor, size: float) -> torch.Tensor:
        if mask is not None:
            grad = grad * mask
        start = delta if delta is not None else torch.zeros_like(grad, dtype=torch.float32)
        return project(start + size * ascent_direction(grad, cfg.norm), cfg.epsilon, cfg.norm).detach()

    if cfg.method == "freelb":
        losses, delta = [], None
        if cfg.init_mag > 0:
            delta = lambda out: random_start(out, mask, cfg.init_mag, cfg.norm)
        for k in range(cfg.steps):
            with perturbed(embedding, delta) as tap:
                losses.append(loss_of())
            used = tap.delta
            if k < cfg.steps - 1:
                delta = step(tap.delta, _grad(losses[-1], tap, retain=True), cfg.alpha)
        return AdversarialLoss(torch.stack(losses).mean(), losses[0], losses[-1] if cfg.steps > 1 else None,
                               used.detach() if used is not None else None)

    # fgm, pgd: the clean pass enters the objective, and its gradient gives the first step
    with perturbed(embedding, None) as tap:
        clean = loss_of()
    grad = _grad(clean, tap, retain=True)
    steps, size = (1, cfg.epsilon) if cfg.method == "fgm" else (cfg.steps, cfg.alpha)
    delta = step(None, grad, size)
    for _ in range(steps - 1):
        with perturbed(embedding, delta) as tap:
            loss = loss_of()
        delta = step(delta, _grad(loss, tap, retain=False), size)  # this pass only finds the direction
    with perturbed(embedding, delta):
        adversarial = loss_of()
    return AdversarialLoss(clean + adversarial, clean, adversarial, delta)
