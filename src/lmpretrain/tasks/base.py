"""What the downstream (fine-tuning) LightningModules share: the pretrained network with a task head
attached to it, hidden states for any of the three architectures, and loading pretraining weights.

The head is registered *inside* the network (`network.task_head`), so the optimizer, DDP/FSDP and
the checkpoint see one module, exactly as in pretraining; a pretraining checkpoint loads into
everything but the head.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import nn

from lmpretrain.checkpoints import read_checkpoint
from lmpretrain.errors import ConfigError
from lmpretrain.models import build_network
from lmpretrain.models.blocks import Block
from lmpretrain.models.encdec import EncoderDecoder
from lmpretrain.models.encoder import Encoder
from lmpretrain.models.gpt import GPT
from lmpretrain.models.pooling import POOLINGS
from lmpretrain.module import LMModule, block_flops_per_token
from lmpretrain.tasks.adversarial import AdversarialConfig, adversarial_loss

TASK_POOLINGS = ("auto", *POOLINGS)


def read_pretrained(path: str) -> dict:
    """A single-file pretraining checkpoint -> {"model": config dict, "network": state dict,
    "tokenizer_json": str}. One clear error for anything else."""
    ckpt = read_checkpoint(path, "pretrained")
    model = (ckpt.get("hyper_parameters") or {}).get("model")
    state = {k[len("network."):]: v for k, v in ckpt.get("state_dict", {}).items() if k.startswith("network.")}
    if not model or not state or not ckpt.get("tokenizer_json"):
        raise ConfigError(f"pretrained={path} lacks the model config, network weights or tokenizer of an "
                          f"lmpretrain checkpoint; pass a checkpoint written by python -m lmpretrain.train")
    return {"model": dict(model), "network": state, "tokenizer_json": ckpt["tokenizer_json"]}


class FinetuneModule(LMModule):
    """A network plus a task head of `num_outputs` outputs (per example or per token) on its hidden
    states (num_outputs=None: no head, for tasks on the network's own LM head). Subclasses define
    the head's use, the loss and the metrics.

    pooling (per-example tasks): cls = the first position (BERT's [CLS]); last = the last real
        token (a causal decoder has read the whole text only there); mean = the masked mean;
        auto = cls for an encoder, last for a decoder, mean for an encoder-decoder's encoder.
    """

    uses_every_parameter = False  # the pretraining heads (MLM, pooler, LM head) sit unused: DDP must know

    def __new__(cls, *args, **kwargs):
        # conf/adversarial/ hands `adversarial` to every task; one that has not opted in (its __init__
        # takes no `adversarial` and its training_step does not call `train_loss`) says so in one line.
        if kwargs.get("adversarial") is not None and "adversarial" not in inspect.signature(cls.__init__).parameters:
            raise ConfigError(f"{cls.__name__} does not support adversarial training yet; use adversarial=none "
                              f"(supported: SequenceClassificationModule)")
        return super().__new__(cls)

    def __init__(self, model: dict, num_outputs: int | None, pooling: str = "auto", classifier_dropout: float = 0.1,
                 optimizer: dict | None = None, scheduler: dict | None = None, adversarial: dict | None = None):
        super().__init__(optimizer, scheduler)
        self.adversarial = AdversarialConfig.from_dict(adversarial)  # method=none unless conf/adversarial/ sets one
        if pooling not in TASK_POOLINGS:
            raise ConfigError(f"task.pooling={pooling!r} must be one of {TASK_POOLINGS}")
        self.network = build_network(model)
        if pooling == "auto":
            pooling = {Encoder: "cls", GPT: "last"}.get(type(self.network), "mean")
        self.pooling = pooling
        if num_outputs is None:  # a task that reads the network's own LM head (generation): no task head
            return
        self.network.task_head = nn.Sequential(nn.Dropout(classifier_dropout),
                                               nn.Linear(self.network.config.n_embd, num_outputs))

    @staticmethod
    def check_labels(labels: list[str] | None) -> list[str]:
        if not labels:
            raise ConfigError("a task needs at least one label")
        return [str(x) for x in labels]

    def flops_per_token(self, seq_len: int) -> float | None:
        """6 x the weights that multiply every token (the blocks and the task head; no LM head runs
        here, so the embedding table is a lookup, not a matmul) + the attention term."""
        blocks = [m for m in self.network.modules() if isinstance(m, Block)]
        head = getattr(self.network, "task_head", None)
        n_head = sum(p.numel() for p in head.parameters()) if head is not None else 0
        return block_flops_per_token(blocks, self.network.config.n_embd, seq_len, n_head)

    new_parameters = ("task_head.", "match_emb.", "copy_head.")  # added for fine-tuning: no checkpoint has them

    def load_pretrained_network(self, state: dict) -> None:
        """Pretraining weights into the network; only the new task parts may be missing."""
        missing, unexpected = self.network.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith(self.new_parameters)]
        if missing or unexpected:
            raise ConfigError(f"the pretrained checkpoint does not fit model config (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}); leave model.* unset when pretrained= is given")

    def features(self, batch: dict) -> torch.Tensor:
        """(B, T, C) hidden states of the input, for any architecture."""
        net, mask = self.network, batch.get("attention_mask")
        if isinstance(net, Encoder):
            return net.features(batch["input_ids"], mask, batch.get("token_type_ids"))
        if isinstance(net, (GPT, EncoderDecoder)):
            return net.features(batch["input_ids"], mask)
        raise ConfigError(f"fine-tuning does not know how to read a {type(net).__name__}")

    def train_loss(self, batch: dict, loss_of: Callable[[], torch.Tensor]) -> torch.Tensor:
        """What `training_step` returns for a batch whose forward + loss is `loss_of()`: that loss
        (adversarial=none: exactly the plain path), or the adversarial objective of
        `tasks/adversarial.py`, which calls `loss_of` once per pass with the token embedding
        perturbed. `train/loss` is always the clean loss (comparable across methods), the objective's
        adversarial term is logged as `train/adv_loss`."""
        out = adversarial_loss(self.adversarial, self.network.tok_emb, loss_of, batch.get("attention_mask"))
        self.log_train_loss(out.clean)
        if out.adversarial is not None:
            self.log("train/adv_loss", out.adversarial, sync_dist=True)
        if out.total is not out.clean:
            self.check_finite(out.total)
        return out.total

    # Validation and test share one metric path: subclasses define `_eval_step(split, batch)`, which
    # updates `self.metrics[split]` (a ModuleDict of metrics); `_eval_end` logs each as
    # `<split>/<name>` (a metric returning a dict logs each of its keys) and resets them all.
    prog_bar_metric: str = "loss"  # the one the progress bar shows

    def _eval_step(self, split: str, batch: dict) -> None:
        raise NotImplementedError

    def _eval_end(self, split: str) -> None:
        for name, metric in self.metrics[split].items():
            value = metric.compute()
            for key, v in (value.items() if isinstance(value, dict) else [(name, value)]):
                self.log(f"{split}/{key}", v, prog_bar=key == self.prog_bar_metric)
        for metric in self.metrics[split].values():
            metric.reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step("test", batch)

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

