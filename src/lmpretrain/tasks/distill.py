"""Distillation for fine-tuning: a classifier trained on the labels and on a fine-tuned teacher's task
logits (`task=spam_distill task.teacher=<teacher .ckpt>`; any sequence classification preset works with
`task._target_=lmpretrain.tasks.distill.DistilledClassificationModule +task.teacher=...`, token
classification (NER) with `...DistilledTokenClassificationModule`).

    loss = hard * CE(student logits, labels) + soft * T^2 KL(softmax(teacher / T) || softmax(student / T))

The teacher is a checkpoint of the same task module (sequence or token classification), labels and
tokenizer (e.g. a bigger model fine-tuned on the task). Token classification distils the positions the
labels score (each word's first sub-word), so the soft and hard terms average over the same words.
As in `objective=distill` the teacher is kept out of the module tree: loaded at `setup("fit")` on
every process (a full replica under DDP/FSDP2), frozen, in eval mode, never saved with the student,
never wrapped or sharded. Validation and test score the student alone, so its checkpoint loads and
evaluates without the teacher. Sequence classification works with `adversarial=`: the teacher's
logits come from the clean input, every adversarial pass of the student is pulled towards them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from lmpretrain.distill import soft_target_loss
from lmpretrain.errors import ConfigError
from lmpretrain.tasks.classification import SequenceClassificationModule
from lmpretrain.tasks.token_classification import TokenClassificationModule


class TaskDistillation:
    """What a distilled task module adds to its task module (a mixin listed first): the frozen teacher,
    its checks and the combined loss. `teacher_class` is the task module the teacher must be."""

    teacher_class: type

    def init_distillation(self, temperature: float, weights: dict | None) -> None:
        weights = {"hard": 0.5, "soft": 0.5, **(weights or {})}
        if set(weights) != {"hard", "soft"} or any(not float(v) >= 0 for v in weights.values()) \
                or sum(map(float, weights.values())) <= 0:
            raise ConfigError(f"task.weights={weights} must be {{hard: >= 0, soft: >= 0}} with a positive sum "
                              f"(hidden-state and attention transfer: objective=distill, pretraining only)")
        if not temperature > 0:
            raise ConfigError(f"task.temperature={temperature} must be > 0")
        self.temperature, self.distill_weights = float(temperature), {k: float(v) for k, v in weights.items()}
        self.__dict__["teacher"] = None  # outside the module tree: never saved, wrapped or sharded

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.teacher is None:
            self.load_teacher()

    def load_teacher(self) -> torch.nn.Module:
        from lmpretrain.checkpoints import load_module

        path = self.hparams.get("teacher")
        if not path:
            raise ConfigError("task.teacher is unset; pass the fine-tuned teacher: task.teacher=<.ckpt of "
                              "python -m lmpretrain.finetune on this task>")
        teacher = load_module(path, "task.teacher")
        kind = self.teacher_class
        if not isinstance(teacher, kind) or list(teacher.labels) != self.labels:
            raise ConfigError(f"task.teacher={path} is not a {kind.__name__} of labels {self.labels} (got "
                              f"{type(teacher).__name__} {getattr(teacher, 'labels', None)}); fine-tune the "
                              f"teacher on this task first")
        same = teacher.tokenizer_json is not None and self.tokenizer_json is not None and (
            Tokenizer.from_str(teacher.tokenizer_json).get_vocab(with_added_tokens=True)
            == Tokenizer.from_str(self.tokenizer_json).get_vocab(with_added_tokens=True))
        if not same:
            theirs = teacher.network.config.vocab_size
            raise ConfigError(f"task.teacher={path} has another tokenizer ({theirs} tokens, the student "
                              f"{self.network.config.vocab_size}); the teacher and student must share one: "
                              f"fine-tune the student from a checkpoint with the teacher's tokenizer")
        teacher.eval().requires_grad_(False)
        self.__dict__["teacher"] = teacher
        return teacher

    @torch.no_grad()
    def teacher_logits(self, batch: dict) -> torch.Tensor:
        if next(self.teacher.parameters()).device != self.device:
            self.teacher.to(self.device)
        return self.teacher(batch)

    def distillation_loss(self, logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                          parts: dict) -> torch.Tensor:
        """hard * CE + soft * T^2 KL over the rows whose label is not -100 (all of them for sequence
        classification: logits (B, C); token classification: (B, T, C), the scored positions only).
        The first call's parts (the clean pass under adversarial training) go into `parts`."""
        logits, teacher_logits, labels = logits.flatten(0, -2), teacher_logits.flatten(0, -2), labels.flatten()
        scored = labels != -100
        hard = F.cross_entropy(logits, labels, ignore_index=-100)
        soft = soft_target_loss(logits[scored], teacher_logits[scored], self.temperature)
        parts.setdefault("hard_loss", hard.detach())
        parts.setdefault("soft_loss", soft.detach())
        return self.distill_weights["hard"] * hard + self.distill_weights["soft"] * soft

    def log_parts(self, parts: dict) -> None:
        for key, value in parts.items():
            self.log(f"train/{key}", value, sync_dist=True)


class DistilledClassificationModule(TaskDistillation, SequenceClassificationModule):
    """`SequenceClassificationModule` + `teacher` (a .ckpt path), `temperature`, `weights` {hard, soft}.
    Works with `adversarial=`: the teacher's logits come from the clean input, every adversarial pass
    of the student is pulled towards them."""

    teacher_class = SequenceClassificationModule

    def __init__(self, model: dict, labels: list[str], teacher: str | None = None, temperature: float = 2.0,
                 weights: dict | None = None, pooling: str = "auto", classifier_dropout: float = 0.1,
                 optimizer: dict | None = None, scheduler: dict | None = None, adversarial: dict | None = None):
        super().__init__(model, labels, pooling, classifier_dropout, optimizer, scheduler, adversarial)
        self.save_hyperparameters()
        self.init_distillation(temperature, weights)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        teacher_logits, parts = self.teacher_logits(batch), {}  # (B, num_labels)
        loss = self.train_loss(batch, lambda: self.distillation_loss(self(batch), teacher_logits,
                                                                     batch["labels"], parts))
        self.log_parts(parts)
        return loss


class DistilledTokenClassificationModule(TaskDistillation, TokenClassificationModule):
    """`TokenClassificationModule` + `teacher` (a token classification .ckpt of the same tags and
    tokenizer), `temperature`, `weights` {hard, soft}."""

    teacher_class = TokenClassificationModule

    def __init__(self, model: dict, labels: list[str], teacher: str | None = None, temperature: float = 2.0,
                 weights: dict | None = None, pooling: str = "auto", classifier_dropout: float = 0.1,
                 optimizer: dict | None = None, scheduler: dict | None = None):
        super().__init__(model, labels, pooling, classifier_dropout, optimizer, scheduler)
        self.save_hyperparameters()
        self.init_distillation(temperature, weights)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        parts = {}
        loss = self.distillation_loss(self(batch), self.teacher_logits(batch), batch["labels"], parts)
        self.log_parts(parts)
        return self.log_train_loss(loss)
