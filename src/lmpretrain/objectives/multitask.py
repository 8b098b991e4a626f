"""A weighted mixture of pretraining losses over one network: each training step picks one loss
with probability proportional to its weight and optimizes it on the step's batch.

All losses read the same batches, so pick a data module that serves all of them: sentence pairs for
MLM + SOP, packed blocks for causal LM + contrastive (SimCSE over dropout views of a block).
Each is logged under its name (`train/<name>/loss`, `val/<name>/loss`, `val/<name>/<metric>`);
`val/loss` is the weight-averaged validation loss.
"""

from __future__ import annotations

from lmpretrain.errors import ConfigError
from lmpretrain.objectives.causal_lm import CausalLMLoss
from lmpretrain.objectives.contrastive import ContrastiveLoss
from lmpretrain.objectives.masked_lm import MaskedLMLoss, SentencePairLoss
from lmpretrain.objectives.pretrain import Loss, PretrainModule

TYPES = ("causal_lm", "mlm", "nsp", "sop", "contrastive")


def build_loss(name: str, spec: dict) -> Loss:
    spec = dict(spec)
    type = spec.pop("type", name)
    spec.pop("weight", None)
    if type not in TYPES:
        raise ConfigError(f"objective.losses.{name}.type={type!r} is unknown; use one of {TYPES}")
    try:
        if type == "causal_lm":
            return CausalLMLoss(**spec)
        if type == "mlm":
            return MaskedLMLoss(**spec)
        if type in ("nsp", "sop"):
            return SentencePairLoss(type)
        return ContrastiveLoss(**spec)
    except TypeError as e:
        raise ConfigError(f"objective.losses.{name}: {e}; see the {type} objective's options") from None


class MultitaskModule(PretrainModule):
    """`objective=multitask`: losses = {name: {type: mlm|sop|nsp|causal_lm|contrastive, weight: w, ...}}."""

    def __init__(self, model: dict, losses: dict[str, dict], optimizer: dict | None = None,
                 scheduler: dict | None = None, seed: int = 0):
        super().__init__(model, optimizer, scheduler, seed)
        self.save_hyperparameters()
        self.set_losses({name: build_loss(name, spec) for name, spec in losses.items()},
                        {name: spec.get("weight", 1.0) for name, spec in losses.items()})
