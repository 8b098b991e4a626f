"""`objective=electra`: replaced-token detection (ELECTRA, Clark et al. 2020) on an Encoder.

A small generator, trained as a masked LM, fills the masked positions with tokens it samples; the
network (the discriminator, what `pretrained=` fine-tuning reads) then tells for *every* token
whether it is the original or a replacement:

    loss = generator MLM loss on the masked positions + disc_weight * BCE(replaced?) on every token

Every position gives the discriminator a training signal, where MLM learns from 15% of them, which
is why ELECTRA reaches a given downstream score with a fraction of MLM's compute, most of all for
small models (ELECTRA-Small: GLUE 79.9 vs BERT-Small's 75.1 at the same compute), over 10^5-10^6
steps. At 2,000 CPU steps it does not pay here: the generator is still on the unigram plateau and
the discriminator barely past the base rate (README, "ELECTRA").

Choices, after the paper and its released code:
- the generator is the discriminator's depth at `generator.size` of its width (1/4, the paper's
  best range is 1/4-1/2) and shares the discriminator's token, position and segment embeddings
  (`Encoder.embed`), projected to its width; its prediction head is tied to the token embedding;
- every selected token is replaced by [MASK] for the generator (no 80/10/10), and the sample is
  drawn from the generator's softmax (temperature 1, special tokens excluded, with the step's seeded
  generator, so a resumed run draws the same replacements);
- a sampled token equal to the original counts as original (label 0), as in the paper;
- disc_weight 50; the sampling is not back-propagated through (the generator learns from its MLM
  loss only, not adversarially).

The generator and the discriminator's detection head live in `losses.electra` (saved with the run,
outside `network.*`), so a checkpoint fine-tunes like an MLM one. They are optimized, clipped and
synced by DDP with the network. Sharded strategies (FSDP2 / TP) are refused: the generator reads
the network's embedding weights outside the network's own forward.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn
from torchmetrics import MeanMetric

from lmpretrain.errors import ConfigError
from lmpretrain.metrics import TokenNLL
from lmpretrain.models.blocks import ACTIVATIONS, Block, Rotary, init_weights
from lmpretrain.models.encoder import Encoder, EncoderConfig, encoder_stack, padding_mask
from lmpretrain.module import RuntimeOptions, block_flops_per_token
from lmpretrain.objectives.masked_lm import MaskedLMLoss
from lmpretrain.objectives.pretrain import Loss, PretrainModule, derive_seed, torch_generator


@dataclass
class GeneratorConfig:
    size: float = 0.25  # generator width / discriminator width
    n_layer: int | None = None  # null = the discriminator's depth

    def __post_init__(self) -> None:
        if not 0.0 < self.size <= 1.0:
            raise ConfigError(f"objective.generator.size={self.size} must be in (0, 1]")
        if self.n_layer is not None and self.n_layer < 1:
            raise ConfigError(f"objective.generator.n_layer={self.n_layer} must be >= 1 (or null)")

    def shape(self, c: EncoderConfig) -> EncoderConfig:
        """The generator's layer shape: the discriminator's head width kept where it divides."""
        width = max(1, round(c.n_embd * self.size))
        n_head = max(1, width // c.head_dim) if width % c.head_dim == 0 else 1
        return replace(c, n_embd=width, n_head=n_head, n_layer=self.n_layer or c.n_layer)


class Generator(nn.Module):
    """A narrow masked-LM encoder over the discriminator's embeddings (handed in at each call, never
    held: they stay the network's, in `network.*` of the checkpoint)."""

    def __init__(self, disc: EncoderConfig, cfg: GeneratorConfig):
        super().__init__()
        self.config = c = cfg.shape(disc)
        self.proj_in = nn.Linear(disc.n_embd, c.n_embd) if c.n_embd != disc.n_embd else nn.Identity()
        rotary = Rotary(c.head_dim, c.block_size) if c.position == "rotary" else None
        self.drop = nn.Dropout(c.dropout)
        self.blocks, self.final_norm = encoder_stack(c, rotary)
        # BERT's prediction head back to the embedding width, then the discriminator's token embedding.
        self.dense = nn.Linear(c.n_embd, disc.n_embd)
        self.act = ACTIVATIONS[c.activation]
        self.norm = nn.LayerNorm(disc.n_embd, eps=c.norm_eps)
        self.bias = nn.Parameter(torch.zeros(disc.vocab_size))
        self.apply(init_weights)

    def features(self, network: Encoder, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        x = self.drop(self.proj_in(network.embed(input_ids, token_type_ids)))
        mask = padding_mask(attention_mask)
        for block in self.blocks:
            x = block(x, mask=mask)
        return x if self.final_norm is None else self.final_norm(x)

    def logits(self, network: Encoder, h: torch.Tensor) -> torch.Tensor:
        """h: (N, C_gen) -> (N, vocab), through the tied token embedding."""
        return F.linear(self.norm(self.act(self.dense(h))), network.tok_emb.weight) + self.bias


class DetectionHead(nn.Module):
    """ELECTRA's discriminator head: dense + activation, then one logit per token (replaced?)."""

    def __init__(self, c: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(c.n_embd, c.n_embd)
        self.act = ACTIVATIONS[c.activation]
        self.out = nn.Linear(c.n_embd, 1)
        self.apply(init_weights)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.dense(h))).squeeze(-1)


def last_allowed_id(banned: torch.Tensor, vocab_size: int) -> int:
    """The largest id of a vocabulary of `vocab_size` that the index tensor `banned` leaves in."""
    allowed = torch.ones(vocab_size, dtype=torch.bool, device=banned.device)
    allowed[banned] = False
    return int(torch.nonzero(allowed).max())


def sample_tokens(log_probs: torch.Tensor, banned: torch.Tensor, generator: torch.Generator,
                  last_allowed: int | None = None) -> torch.Tensor:
    """One token per row of log_probs (N, V) drawn from its distribution with the `banned` ids (an
    index tensor) left out, by the inverse of the cumulative distribution with one uniform number
    per row from `generator` (seeded per step). `last_allowed` is `last_allowed_id(banned, V)`,
    which a caller that samples every step computes once. Gumbel-max needs a uniform number and two
    logarithms per vocabulary entry (274 ms a step for 614 x 16k on one CPU thread); this is an exp
    and a cumulative sum over the log-softmax the generator's loss computes anyway."""
    probs = log_probs.detach().float().exp()
    probs[:, banned] = 0.0
    cdf = probs.cumsum(dim=-1)
    u = torch.rand((len(probs), 1), generator=generator, device=probs.device) * cdf[:, -1:]
    # right=True: the first entry whose cumulative mass exceeds u, which has mass of its own, so a
    # banned (zero-mass) token is never chosen; the clamp covers u rounded up to the total.
    if last_allowed is None:
        last_allowed = last_allowed_id(banned, probs.shape[-1])
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=last_allowed)


class ElectraLoss(Loss):
    needs = (Encoder,)

    def __init__(self, network: Encoder, masking: dict | None = None, generator: dict | None = None,
                 disc_weight: float = 50.0, mask_token: str = "[MASK]"):
        super().__init__()
        if not disc_weight > 0:
            raise ConfigError(f"objective.disc_weight={disc_weight} must be > 0")
        self.disc_weight = float(disc_weight)
        # The masking of MLM with every selected token set to [MASK] (ELECTRA's generator input).
        self.masker = MaskedLMLoss({**(masking or {}), "mask_fraction": 1.0, "random_fraction": 0.0}, None, mask_token)
        self.generator = Generator(network.config, GeneratorConfig(**(generator or {})))
        self.head = DetectionHead(network.config)
        self.val_mlm, self.val_mlm_acc = TokenNLL(), MeanMetric()
        self.val_rtd, self.val_rtd_acc, self.val_replaced = MeanMetric(), MeanMetric(), MeanMetric()

    def connect(self, tokenizer: Tokenizer, runtime: RuntimeOptions | None = None) -> None:
        self.masker.connect(tokenizer, runtime)
        # What the generator may not put in: special tokens and the ids of a vocabulary padded past the tokenizer's.
        special = self.masker.special
        banned = torch.cat([torch.nonzero(special).flatten(), torch.arange(len(special), self.generator.bias.numel())])
        self.register_buffer("banned", banned, persistent=False)
        self.last_allowed = last_allowed_id(banned, self.generator.bias.numel())

    def trained_modules(self) -> list[nn.Module]:
        return [self.generator, self.head]

    def flops_per_token(self, network: Encoder, seq_len: int) -> float:
        """Both stacks on every token, the detection head on every token, the generator's head (its
        dense layer and the tied vocabulary projection) on the masked share."""
        g = self.generator
        gen_head = sum(p.numel() for p in g.dense.parameters()) + network.tok_emb.weight.numel()
        gen = block_flops_per_token(list(g.blocks), g.config.n_embd, seq_len,
                                    self.masker.cfg.probability * gen_head + sum(p.numel() for p in g.proj_in.parameters()))
        disc = block_flops_per_token([m for m in network.modules() if isinstance(m, Block)], network.config.n_embd,
                                     seq_len, sum(p.numel() for p in self.head.parameters()))
        return gen + disc

    def _losses(self, network: Encoder, batch: dict, seed: int) -> dict:
        scored = self.masker.maskable(batch)  # what the discriminator is scored on: every real, non-special token
        masked, labels = self.masker.corrupt(batch, seed, scored)
        attention, segments = batch.get("attention_mask"), batch.get("token_type_ids")
        selected = labels != -100
        gen_logits = self.generator.logits(network, self.generator.features(network, masked, attention, segments)[selected])
        targets = labels[selected]
        ids = batch["input_ids"]
        if len(targets):
            log_probs = F.log_softmax(gen_logits.float(), dim=-1)  # once, for the loss and the sampling
            mlm = F.nll_loss(log_probs, targets)
            sampled = sample_tokens(log_probs, self.banned, torch_generator(derive_seed(seed, 1), ids.device),
                                    self.last_allowed)
            replaced_ids = ids.masked_scatter(selected, sampled)
        else:
            mlm, replaced_ids = gen_logits.sum() * 0.0, ids
        is_replaced = (replaced_ids != ids) & scored
        disc_logits = self.head(network.features(replaced_ids, attention, segments))  # (B, T)
        rtd = F.binary_cross_entropy_with_logits(disc_logits[scored], is_replaced[scored].float())
        return {"loss": mlm + self.disc_weight * rtd, "mlm_loss": mlm, "rtd_loss": rtd,
                "mlm_acc": (gen_logits.argmax(-1) == targets).float().mean() if len(targets) else None,
                "rtd_acc": ((disc_logits[scored] > 0) == is_replaced[scored]).float().mean(),
                "replaced": is_replaced[scored].float().mean(), "n_masked": len(targets), "n_scored": int(scored.sum()),
                "inputs": replaced_ids, "is_replaced": is_replaced, "selected": selected, "scored": scored}

    def forward(self, network, batch, seed):
        out = self._losses(network, batch, seed)
        return {k: out[k] for k in ("loss", "mlm_loss", "rtd_loss", "rtd_acc", "replaced")}

    def val_update(self, network, batch, seed):
        out = self._losses(network, batch, seed)
        if out["n_masked"]:
            self.val_mlm.update(out["mlm_loss"], out["n_masked"])
            self.val_mlm_acc.update(out["mlm_acc"], weight=out["n_masked"])
        if out["n_scored"]:
            for metric, key in ((self.val_rtd, "rtd_loss"), (self.val_rtd_acc, "rtd_acc"), (self.val_replaced, "replaced")):
                metric.update(out[key], weight=out["n_scored"])

    def val_compute(self):
        mlm, rtd = self.val_mlm.compute(), self.val_rtd.compute()
        return {"loss": mlm + self.disc_weight * rtd, "mlm_loss": mlm, "mlm_acc": self.val_mlm_acc.compute(),
                "rtd_loss": rtd, "rtd_acc": self.val_rtd_acc.compute(), "replaced": self.val_replaced.compute()}

    def val_reset(self):
        for m in (self.val_mlm, self.val_mlm_acc, self.val_rtd, self.val_rtd_acc, self.val_replaced):
            m.reset()


class ElectraModule(PretrainModule):
    """`objective=electra` on an Encoder (see the module docstring)."""

    def __init__(self, model: dict, masking: dict | None = None, generator: dict | None = None,
                 disc_weight: float = 50.0, mask_token: str = "[MASK]", optimizer: dict | None = None,
                 scheduler: dict | None = None, seed: int = 0):
        super().__init__(model, optimizer, scheduler, seed)
        self.save_hyperparameters()
        if not isinstance(self.network, Encoder):
            raise ConfigError(f"objective electra needs an Encoder network (model=bert_tiny); got "
                              f"{type(self.network).__name__}")
        self.set_losses({"electra": ElectraLoss(self.network, masking, generator, disc_weight, mask_token)})

    @property
    def electra(self) -> ElectraLoss:
        return self.losses["electra"]

    def trained_modules(self) -> nn.ModuleList:
        """What the optimizer updates and clipping sees: the network, the generator, the detection head."""
        return nn.ModuleList([self.network, *self.electra.trained_modules()])

    def clipped_modules(self) -> nn.ModuleList:
        # One norm over everything the optimizer updates, as ELECTRA's global clipping (the generator's
        # gradients, 50x smaller weight in the loss, would otherwise escape the clip).
        return self.trained_modules()

    def configure_model(self) -> None:
        if self._trainer is not None and getattr(self.trainer.strategy, "shard", None) is not None:
            raise ConfigError("objective=electra does not run under a sharded strategy (FSDP2 / tensor parallel): "
                              "its generator reads the network's embeddings outside the network; use strategy=ddp")
        super().configure_model()
