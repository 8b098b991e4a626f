"""A weighted mixture of objectives over one network: each training step picks one task with
probability proportional to its weight and optimizes that task's loss on the step's batch.

All tasks read the same batches, so pick a data module that serves all of them: sentence pairs for
MLM + SOP, packed blocks for causal LM + contrastive (SimCSE over dropout views of a block).
Losses are logged per task (`train/<task>/loss`, `val/<task>/loss`, `val/<task>/<metric>`);
`val/loss` is the weight-averaged validation loss.
"""

from __future__ import annotations

import torch.nn.functional as F

from lmpretrain.errors import ConfigError
from lmpretrain.metrics import TokenNLL
from lmpretrain.models import GPT
from lmpretrain.objectives.contrastive import ContrastiveTask
from lmpretrain.objectives.masked_lm import MaskedLMTask, SentencePairTask
from lmpretrain.objectives.pretrain import PretrainModule, Task


class CausalLMTask(Task):
    """Next-token prediction, as `CausalLMModule`, for use inside a mixture."""

    needs = (GPT,)
    uses_every_parameter = True

    def __init__(self):
        super().__init__()
        self.val_nll = TokenNLL()

    def _loss(self, network, batch):
        logits = network(batch["input_ids"])  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)

    def forward(self, network, batch, seed):
        return {"loss": self._loss(network, batch)}

    def val_update(self, network, batch, seed):
        self.val_nll.update(self._loss(network, batch), int((batch["labels"] != -100).sum()))

    def val_compute(self):
        return {"loss": self.val_nll.compute(), "ppl": self.val_nll.perplexity()}


KINDS = ("causal_lm", "mlm", "nsp", "sop", "contrastive")


def build_task(name: str, spec: dict) -> Task:
    spec = dict(spec)
    kind = spec.pop("kind", name)
    spec.pop("weight", None)
    if kind not in KINDS:
        raise ConfigError(f"objective.tasks.{name}.kind={kind!r} is unknown; use one of {KINDS}")
    try:
        if kind == "causal_lm":
            return CausalLMTask(**spec)
        if kind == "mlm":
            return MaskedLMTask(**spec)
        if kind in ("nsp", "sop"):
            return SentencePairTask(kind)
        return ContrastiveTask(**spec)
    except TypeError as e:
        raise ConfigError(f"objective.tasks.{name}: {e}; see the {kind} objective's options") from None


class MultitaskModule(PretrainModule):
    """`objective=multitask`: tasks = {name: {kind: mlm|sop|nsp|causal_lm|contrastive, weight: w, ...}}."""

    def __init__(self, model: dict, tasks: dict[str, dict], optimizer: dict | None = None,
                 scheduler: dict | None = None, seed: int = 0):
        super().__init__(model, optimizer, scheduler, seed)
        self.save_hyperparameters()
        self.set_tasks({name: build_task(name, spec) for name, spec in tasks.items()},
                       {name: spec.get("weight", 1.0) for name, spec in tasks.items()})
