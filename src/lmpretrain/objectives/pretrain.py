"""The step every pretraining objective shares: one or more losses over one network.

A `Loss` is a plain `nn.Module` holding one loss (and its validation metrics) over a network it
is handed; a `PretrainModule` is a LightningModule that owns the network and one or more losses.
`CausalLMModule`, `MaskedLMModule`, `SpanCorruptionModule`, `ContrastiveModule` hold one loss each,
`MultitaskModule` several, sampled per step by weight. So the families share the step, the seeding
and the logging, and differ only in their loss.

Randomness of the corruption (masks, spans, loss choice) comes from a generator seeded by
(seed, step, batch): a resumed run draws the same masks as a straight one, and every validation
pass sees the same masked batches, so `val/*` values are comparable across evaluations.
"""

from __future__ import annotations

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn

from lmpretrain.errors import ConfigError
from lmpretrain.models import build_network
from lmpretrain.module import LMModule, RuntimeOptions


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, well mixed (nearby steps give unrelated streams)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def torch_generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def token_id(tok: Tokenizer, token: str | None, key: str, required: bool = True) -> int | None:
    """The id of a special token named by config key `key`; a clear error when the tokenizer lacks it."""
    tid = None if token is None else tok.token_to_id(token)
    if tid is None and required:
        raise ConfigError(
            f"{key}={token!r} is not a token of the tokenizer; use tokenizer=wordpiece (it has [PAD] [UNK] "
            f"[CLS] [SEP] [MASK]) or set {key} to one of its special tokens"
        )
    return tid


class Loss(nn.Module):
    """One loss over a shared network. Subclasses set `needs` (the architectures they accept)."""

    needs: tuple[type, ...] = (nn.Module,)
    # Whether every parameter of the network gets a gradient each step (an MLM step leaves BERT's
    # pooler out); see `LMModule.uses_every_parameter`.
    uses_every_parameter: bool = False

    def check_network(self, network: nn.Module, objective: str) -> None:
        if not isinstance(network, self.needs):
            want = " or ".join(n.__name__ for n in self.needs)
            raise ConfigError(
                f"objective {objective} needs a {want} network (model=bert_tiny for an Encoder, t5_tiny for an "
                f"EncoderDecoder, gpt_tiny for a GPT); got {type(network).__name__}"
            )

    def connect(self, tokenizer: Tokenizer, runtime: RuntimeOptions) -> None:
        """The run's tokenizer (resolve the token ids this loss needs) and runtime options; called by
        `PretrainModule.connect`."""

    def forward(self, network: nn.Module, batch: dict, seed: int) -> dict[str, torch.Tensor]:
        """Training: {"loss": the loss to optimize, "<part>": anything else worth logging}."""
        raise NotImplementedError

    def flops_per_token(self, network: nn.Module, seq_len: int) -> float | None:
        """Training FLOPs (forward + backward) of one step of this loss per input token, counting
        what runs on how many positions; None = `LMModule.flops_per_token` (6N + attention on every
        token, right for a causal LM)."""
        return None

    def val_update(self, network: nn.Module, batch: dict, seed: int) -> None:
        raise NotImplementedError

    def val_compute(self) -> dict[str, torch.Tensor]:
        """Validation metrics since the last reset; must hold "loss"."""
        raise NotImplementedError

    def val_reset(self) -> None:
        for m in self.children():
            if hasattr(m, "reset"):
                m.reset()


class PretrainModule(LMModule):
    """Subclasses call `super().__init__(model, ...)` (which builds `self.network`), then
    `self.set_losses(...)` with losses sized from `self.network.config`."""

    def __init__(self, model: dict, optimizer: dict | None = None, scheduler: dict | None = None, seed: int = 0):
        super().__init__(optimizer, scheduler)
        self.network = self.build_network(model)
        self.losses = nn.ModuleDict()
        self.weights: dict[str, float] = {}
        self.seed = seed

    def set_losses(self, losses: dict[str, Loss], weights: dict[str, float] | None = None) -> None:
        self.losses = nn.ModuleDict(losses)
        self.weights = {name: float((weights or {}).get(name, 1.0)) for name in losses}
        if not losses or any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ConfigError(f"objective loss weights {self.weights} must be >= 0 with a positive sum")
        for name, loss in self.losses.items():
            loss.check_network(self.network, name)

    def build_network(self, model: dict) -> nn.Module:
        return build_network(model)

    def load_pretrained_network(self, state: dict) -> None:
        """Continual pretraining: exactly the checkpoint's network weights, every one of them (the
        optimizer, schedule and data position start fresh). A network of another family (an encoder
        for a causal LM, a fine-tuned one with a task head) does not fit: one error."""
        missing, unexpected = self.network.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ConfigError(f"its network does not fit objective {type(self).__name__} (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}); continue it with the objective it was pretrained with")

    def connect(self, tokenizer_json: str | None = None, runtime: RuntimeOptions | None = None) -> None:
        super().connect(tokenizer_json, runtime)
        if self.tokenizer_json is not None:
            tokenizer = Tokenizer.from_str(self.tokenizer_json)
            for loss in self.losses.values():
                loss.connect(tokenizer, self.runtime)

    def flops_per_token(self, seq_len: int) -> float | None:
        """Each loss's own count (`Loss.flops_per_token`), weighted as `pick_loss` draws them: a
        multitask run's expected FLOPs per step, which a logging window of steps averages."""
        total = 0.0
        for name, loss in self.losses.items():
            flops = loss.flops_per_token(self.network, seq_len)
            if flops is None:
                flops = super().flops_per_token(seq_len)
                if flops is None:
                    return None
            total += self.weights[name] * flops
        return total / sum(self.weights.values())

    @property
    def uses_every_parameter(self) -> bool:
        """One loss that touches every parameter; several losses, sampled per step, never do."""
        return len(self.losses) == 1 and all(t.uses_every_parameter for t in self.losses.values())

    def metric_name(self, loss: str, metric: str) -> str:
        """`loss`, `mlm_acc` for one loss; `mlm/loss` when losses share the module."""
        return metric if len(self.losses) == 1 else f"{loss}/{metric}"

    def pick_loss(self, seed: int) -> str:
        names = list(self.losses)
        if len(names) == 1:
            return names[0]
        p = np.array([self.weights[n] for n in names]) / sum(self.weights.values())
        return names[np.random.default_rng(seed).choice(len(names), p=p)]

    def rank_seed(self, seed: int) -> int:
        """The corruption seed for this process's share of the batch: data-parallel ranks draw
        different masks (rank 0 keeps the single-process stream); tensor-parallel peers, which hold
        the same batch, draw the same ones."""
        from lmpretrain.distributed import data_parallel_rank_and_size

        rank, _ = data_parallel_rank_and_size(self._trainer)
        return seed if rank == 0 else derive_seed(seed, rank)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        seed = derive_seed(self.seed, 0, self.global_step, batch_idx)
        name = self.pick_loss(seed)  # the same loss on every rank: they all run the same layers
        out = self.losses[name](self.network, batch, self.rank_seed(seed))
        self.log_train_loss(out["loss"])
        for key, value in out.items():
            if key != "loss" or len(self.losses) > 1:
                self.log(f"train/{self.metric_name(name, key)}", value)
        return out["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        seed = self.rank_seed(derive_seed(self.seed, 1, batch_idx))  # the same masks at every validation
        for loss in self.losses.values():
            loss.val_update(self.network, batch, seed)

    def on_validation_epoch_end(self) -> None:
        total, weight_sum = 0.0, sum(self.weights.values())
        for name, loss in self.losses.items():
            metrics = loss.val_compute()
            total = total + self.weights[name] / weight_sum * metrics["loss"]
            for key, value in metrics.items():
                if key != "loss" or len(self.losses) > 1:
                    self.log(f"val/{self.metric_name(name, key)}", value)
            loss.val_reset()
        self.log("val/loss", total, prog_bar=True)
