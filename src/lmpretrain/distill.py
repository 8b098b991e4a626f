"""Knowledge-distillation losses as pure functions, and the hooks that collect what they compare.

  soft_target_loss      Hinton et al. 2015: KL(teacher || student) of the temperature-softened
                        distributions, times T^2 so its gradient keeps the hard loss's scale as T changes.
  hidden_state_loss     TinyBERT (Jiao et al. 2020): MSE between mapped layers' hidden states, the
                        student's passed through a learned projection when the widths differ.
  attention_loss        MiniLM (Wang et al. 2020): KL(teacher || student) of each query's attention
                        distribution, per head when the head counts match, else of the head mean.
  init_from_teacher     DistilBERT (Sanh et al. 2019): start a student of the teacher's width from the
                        teacher's weights, block i from the teacher block the layer map pairs it with.

Layers are numbered like hidden states: 0 is the embedding output (the first block's input), i >= 1
the output of block i (and, for attention, block i's self-attention). A layer map is a list of
(student layer, teacher layer) pairs; `uniform_layer_map` is TinyBERT's default, student layer i
-> teacher layer i * L_teacher / L_student.

`LayerCapture` records those tensors with forward hooks on the blocks (hidden states) and on the
attention's q/k projections (attention scores are recomputed from them, since the fused
`scaled_dot_product_attention` never materializes the weights); the recomputation keeps gradients.
No Lightning or Hydra in here.
"""

from __future__ import annotations

import re
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from lmpretrain.errors import ConfigError

# Stands in for -inf in masked attention scores: a finite value keeps masked entries' KL terms at
# exactly 0 * finite instead of 0 * nan (and their gradients free of nan), while exp() of it is 0.
MASKED_SCORE = -1e4


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * mean over rows of KL(softmax(teacher / T) || softmax(student / T)).

    student_logits, teacher_logits: (N, V) -- one row per position (or example) that is distilled.
    Computed in float32 (bf16 logits lose the small probabilities the soft targets are about).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    if student_logits.size(0) == 0:
        return student_logits.sum() * 0.0
    t = float(temperature)
    log_q = F.log_softmax(student_logits.float() / t, dim=-1)  # (N, V) student
    log_p = F.log_softmax(teacher_logits.float() / t, dim=-1)  # (N, V) teacher
    kl = F.kl_div(log_q, log_p, log_target=True, reduction="sum") / student_logits.size(0)
    return kl * t * t


def uniform_layer_map(n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """Student block i -> teacher block i * n_teacher // n_student, for i = 1..n_student (the last
    student layer always meets the last teacher layer)."""
    return [(i, i * n_teacher // n_student) for i in range(1, n_student + 1)]


BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")


@torch.no_grad()
def init_from_teacher(student: nn.Module, teacher: nn.Module, pairs: list[tuple[int, int]]) -> list[str]:
    """Copy the teacher's weights into a student of the same width (DistilBERT's initialisation, which
    takes one teacher layer of two): every tensor outside the blocks (embeddings, norms, heads) from
    the teacher's tensor of the same name, student block i (1-based) from teacher block j for each
    (i, j) in `pairs` with i, j >= 1. A student block no pair names keeps its own initialisation.
    Returns the student keys copied; one ConfigError when a tensor is missing or shaped otherwise."""
    student_cfg, teacher_cfg = getattr(student, "config", None), getattr(teacher, "config", None)
    if student_cfg is not None and teacher_cfg is not None and student_cfg.n_head != teacher_cfg.n_head:
        # same tensor shapes, other heads: the copied q/k/v would be split differently
        raise ConfigError(f"objective.init_from_teacher: the student has {student_cfg.n_head} heads, the teacher "
                          f"{teacher_cfg.n_head}; set model.n_head={teacher_cfg.n_head} or "
                          f"objective.init_from_teacher=false")
    source = teacher.state_dict()
    blocks = {i: j for i, j in pairs if i >= 1 and j >= 1}
    copied = []
    for key, tensor in student.state_dict().items():
        m = BLOCK_KEY.match(key)
        if m and int(m[1]) + 1 not in blocks:
            continue
        theirs = f"blocks.{blocks[int(m[1]) + 1] - 1}.{m[2]}" if m else key
        if theirs not in source or source[theirs].shape != tensor.shape:
            found = tuple(source[theirs].shape) if theirs in source else "nothing"
            raise ConfigError(f"objective.init_from_teacher: the student's {key} {tuple(tensor.shape)} has "
                              f"{found} to start from in the teacher ({theirs}); the student needs the teacher's "
                              f"width, heads and positions (model.n_embd, model.n_head, model.position): set them "
                              f"as the teacher's or objective.init_from_teacher=false")
        tensor.copy_(source[theirs])  # state_dict tensors share the parameters' storage
        copied.append(key)
    return copied


def check_layer_map(layer_map, n_student: int, n_teacher: int, key: str = "objective.layer_map") -> list[tuple[int, int]]:
    """The map as (student, teacher) int pairs, each within 0..n_layer; one ConfigError otherwise."""
    try:
        pairs = [(int(s), int(t)) for s, t in layer_map]
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={layer_map!r} must be a list of [student_layer, teacher_layer] pairs") from None
    bad = [p for p in pairs if not (0 <= p[0] <= n_student and 0 <= p[1] <= n_teacher)]
    if bad or not pairs:
        raise ConfigError(f"{key}: pairs {bad or pairs} out of range; layers are 0 (embeddings) .. {n_student} "
                          f"for the student and 0 .. {n_teacher} for the teacher")
    return pairs


class HiddenProjection(nn.Module):
    """One learned linear map per layer pair, student width -> teacher width (identity when equal).

    A module of its own (called through `forward`) so FSDP2 can shard it like the network."""

    def __init__(self, n_pairs: int, student_width: int, teacher_width: int):
        super().__init__()
        make = (lambda: nn.Identity()) if student_width == teacher_width else (
            lambda: nn.Linear(student_width, teacher_width, bias=False))
        self.maps = nn.ModuleList(make() for _ in range(n_pairs))

    def forward(self, hidden: list[torch.Tensor]) -> list[torch.Tensor]:
        """hidden[k]: (..., C_student) -> (..., C_teacher)."""
        return [m(h) for m, h in zip(self.maps, hidden)]


def hidden_state_loss(student: list[torch.Tensor], teacher: list[torch.Tensor],
                      projection: nn.Module | None = None, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over layer pairs of the MSE between projected student and teacher hidden states.

    student[k]: (B, T, C_s); teacher[k]: (B, T, C_t); projection maps the list to C_t (None: the
    widths must already match); valid: (B, T) bool, the positions that count (None: all).
    """
    if len(student) != len(teacher) or not student:
        raise ValueError(f"{len(student)} student and {len(teacher)} teacher hidden states; need equal, > 0")
    projected = projection(student) if projection is not None else student
    losses = []
    for s, t in zip(projected, teacher):
        if s.shape != t.shape:
            raise ValueError(f"projected student hidden {tuple(s.shape)} != teacher hidden {tuple(t.shape)}")
        if valid is not None:
            s, t = s[valid], t[valid]  # (N, C)
        losses.append(F.mse_loss(s.float(), t.float()))
    return torch.stack(losses).mean()


def attention_loss(student_scores: torch.Tensor, teacher_scores: torch.Tensor, allowed: torch.Tensor | None = None,
                   valid: torch.Tensor | None = None) -> torch.Tensor:
    """KL(teacher || student) of attention distributions, mean over heads and valid query rows.

    *_scores: (B, H, T, S) pre-softmax scores (q k^T / sqrt(d)); allowed: bool, broadcastable to
    (B, H, T, S), True where a query may attend (causal and/or padding mask); valid: (B, T) bool,
    the query rows that count (None: all). With different head counts the head-mean distributions
    are compared (log of the mean probability, via logsumexp).
    """
    s, t = student_scores.float(), teacher_scores.float()
    if allowed is not None:
        s, t = s.masked_fill(~allowed, MASKED_SCORE), t.masked_fill(~allowed, MASKED_SCORE)
    log_q, log_p = F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1)  # (B, H, T, S)
    if log_q.size(1) != log_p.size(1):
        log_q = torch.logsumexp(log_q, dim=1, keepdim=True) - torch.log(torch.tensor(float(log_q.size(1))))
        log_p = torch.logsumexp(log_p, dim=1, keepdim=True) - torch.log(torch.tensor(float(log_p.size(1))))
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean(1)  # (B, T): per query row, mean over heads
    if valid is not None:
        kl = kl[valid]
    return kl.mean() if kl.numel() else kl.sum() * 0.0


def attention_mask_of(T: int, causal: bool, attention_mask: torch.Tensor | None, device) -> torch.Tensor | None:
    """bool mask broadcastable to (B, 1, T, T): causal (query i sees keys <= i) and/or padding keys."""
    allowed = None
    if causal:
        allowed = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    if attention_mask is not None:
        keys = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        allowed = keys if allowed is None else allowed & keys
    return allowed


class LayerCapture:
    """Forward hooks on a network's blocks that record the hidden states and attention scores of
    chosen layers while `recording()` is active (so activation checkpointing's recomputation in
    backward does not overwrite them). Registered once; `hidden[i]`: (B, T, C); `scores(i)`:
    (B, H, T, T) recomputed from the captured q and k (rotary applied), differentiable."""

    def __init__(self, network: nn.Module, hidden_layers: list[int], attention_layers: list[int]):
        blocks = network.blocks
        self.active = False
        self.hidden: dict[int, torch.Tensor] = {}
        self.qk: dict[int, dict[str, torch.Tensor]] = {}
        self.attn: dict[int, nn.Module] = {i: blocks[i - 1].attn for i in attention_layers}
        self.handles = []
        for i in sorted(set(hidden_layers)):
            if i == 0:
                self.handles.append(blocks[0].register_forward_pre_hook(self._keep_input))
            else:
                self.handles.append(blocks[i - 1].register_forward_hook(self._keep_output(i)))
        for i, attn in self.attn.items():
            for name in ("q", "k"):
                self.handles.append(getattr(attn, name).register_forward_hook(self._keep_projection(i, name)))

    def _keep_input(self, module, args) -> None:
        if self.active:
            self.hidden[0] = args[0]

    def _keep_output(self, i: int):
        def hook(module, args, out) -> None:
            if self.active:
                self.hidden[i] = out
        return hook

    def _keep_projection(self, i: int, name: str):
        def hook(module, args, out) -> None:
            if self.active:
                self.qk.setdefault(i, {})[name] = out
        return hook

    @contextmanager
    def recording(self):
        self.hidden, self.qk, self.active = {}, {}, True
        try:
            yield self
        finally:
            self.active = False

    def scores(self, i: int) -> torch.Tensor:
        """Block i's attention scores q k^T / sqrt(head_dim): (B, H, T, T)."""
        attn, qk = self.attn[i], self.qk[i]
        q, k = attn._heads(qk["q"]), attn._heads(qk["k"])  # (B, H, T, hs)
        if attn.rotary is not None:
            q, k = attn.rotary(q), attn.rotary(k)
        return (q @ k.transpose(-2, -1)) * attn.head_dim ** -0.5

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
