"""The step every non-causal pretraining objective shares: tasks over one network.

A `Task` is a plain `nn.Module` holding one loss (and its own heads and validation metrics) over a
network it is handed; a `PretrainModule` is a LightningModule that owns the network and one or
more tasks. `MaskedLMModule`, `SpanCorruptionModule`, `ContrastiveModule` hold one task each,
`MultitaskModule` several, sampled per step by weight. So the families share the step, the seeding
and the logging, and differ only in their task.

Randomness of the corruption (masks, spans, task choice) comes from a generator seeded by
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
from lmpretrain.module import LMModule


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


class Task(nn.Module):
    """One loss over a shared network. Subclasses set `needs` (the architectures they accept)."""

    needs: tuple[type, ...] = (nn.Module,)
    # Whether every parameter of the network (and the task) gets a gradient each step; an MLM step
    # leaves BERT's pooler out. DDP must then look for unused parameters (strategy=ddp resolves
    # `find_unused_parameters: auto` from this).
    uses_every_parameter: bool = False

    def check_network(self, network: nn.Module, objective: str) -> None:
        if not isinstance(network, self.needs):
            want = " or ".join(n.__name__ for n in self.needs)
            raise ConfigError(
                f"objective {objective} needs a {want} network (model=bert_tiny for an Encoder, t5_tiny for an "
                f"EncoderDecoder, gpt_tiny for a GPT); got {type(network).__name__}"
            )

    def set_tokenizer(self, tok: Tokenizer) -> None:
        """Resolve the token ids this task needs (called whenever the module gets its tokenizer)."""

    def forward(self, network: nn.Module, batch: dict, seed: int) -> dict[str, torch.Tensor]:
        """Training: {"loss": the loss to optimize, "<part>": anything else worth logging}."""
        raise NotImplementedError

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
    `self.set_tasks(...)` with tasks sized from `self.network.config`."""

    def __init__(self, model: dict, optimizer: dict | None = None, scheduler: dict | None = None, seed: int = 0):
        super().__init__(optimizer, scheduler)
        self.network = self.build_network(model)
        self.tasks = nn.ModuleDict()
        self.weights: dict[str, float] = {}
        self.seed = seed

    def set_tasks(self, tasks: dict[str, Task], weights: dict[str, float] | None = None) -> None:
        self.tasks = nn.ModuleDict(tasks)
        self.weights = {name: float((weights or {}).get(name, 1.0)) for name in tasks}
        if not tasks or any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ConfigError(f"objective task weights {self.weights} must be >= 0 with a positive sum")
        for name, task in self.tasks.items():
            task.check_network(self.network, name)

    def build_network(self, model: dict) -> nn.Module:
        return build_network(model)

    # The tokenizer arrives after construction (train.build sets it; load_from_checkpoint restores it
    # from the checkpoint): that is when tasks can resolve [MASK], [PAD] and friends.
    @property
    def tokenizer_json(self) -> str | None:
        return self.__dict__.get("_tokenizer_json")

    @tokenizer_json.setter
    def tokenizer_json(self, value: str | None) -> None:
        self.__dict__["_tokenizer_json"] = value
        if value is not None:
            tok = Tokenizer.from_str(value)
            for task in self.tasks.values():
                task.set_tokenizer(tok)

    @property
    def uses_every_parameter(self) -> bool:
        """One task that touches every parameter; several tasks, sampled per step, never do."""
        return len(self.tasks) == 1 and all(t.uses_every_parameter for t in self.tasks.values())

    def metric_name(self, task: str, metric: str) -> str:
        """`loss`, `mlm_acc` for one task; `mlm/loss` when tasks share the module."""
        return metric if len(self.tasks) == 1 else f"{task}/{metric}"

    def pick_task(self, seed: int) -> str:
        names = list(self.tasks)
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
        name = self.pick_task(seed)  # the same task on every rank: they all run the same layers
        out = self.tasks[name](self.network, batch, self.rank_seed(seed))
        self.check_finite(out["loss"])
        # sync_dist: the mean over all ranks, i.e. the loss of the global batch (a no-op on one process).
        self.log("train/loss", out["loss"], prog_bar=True, sync_dist=True)
        for key, value in out.items():
            if key != "loss" or len(self.tasks) > 1:
                self.log(f"train/{self.metric_name(name, key)}", value)
        return out["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        seed = self.rank_seed(derive_seed(self.seed, 1, batch_idx))  # the same masks at every validation
        for task in self.tasks.values():
            task.val_update(self.network, batch, seed)

    def on_validation_epoch_end(self) -> None:
        total, weight_sum = 0.0, sum(self.weights.values())
        for name, task in self.tasks.items():
            metrics = task.val_compute()
            total = total + self.weights[name] / weight_sum * metrics["loss"]
            for key, value in metrics.items():
                if key != "loss" or len(self.tasks) > 1:
                    self.log(f"val/{self.metric_name(name, key)}", value)
            task.val_reset()
        self.log("val/loss", total, prog_bar=True)
