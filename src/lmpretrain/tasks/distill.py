"""Distillation for fine-tuning: a sequence classifier trained on the labels and on a fine-tuned
teacher's task logits (`task=spam_distill task.teacher=<teacher .ckpt>`; any classification preset
works with `task._target_=lmpretrain.tasks.distill.DistilledClassificationModule +task.teacher=...`).

    loss = hard * CE(student logits, labels) + soft * T^2 KL(softmax(teacher / T) || softmax(student / T))

The teacher is a `SequenceClassificationModule` checkpoint of the same labels and tokenizer (e.g. a
bigger model fine-tuned on the task). As in `objective=distill` it is kept out of the module tree:
loaded at `setup("fit")` on every process (a full replica under DDP/FSDP2), frozen, in eval mode,
never saved with the student, never wrapped or sharded. Validation and test score the student alone,
so its checkpoint loads and evaluates without the teacher. Works with `adversarial=`: the teacher's
logits come from the clean input, every adversarial pass of the student is pulled towards them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from lmpretrain.distill import soft_target_loss
from lmpretrain.errors import ConfigError
from lmpretrain.tasks.classification import SequenceClassificationModule


class DistilledClassificationModule(SequenceClassificationModule):
    """`SequenceClassificationModule` + `teacher` (a .ckpt path), `temperature`, `weights` {hard, soft}."""

    def __init__(self, model: dict, labels: list[str], teacher: str | None = None, temperature: float = 2.0,
                 weights: dict | None = None, pooling: str = "auto", classifier_dropout: float = 0.1,
                 optimizer: dict | None = None, scheduler: dict | None = None, adversarial: dict | None = None):
        super().__init__(model, labels, pooling, classifier_dropout, optimizer, scheduler, adversarial)
        self.save_hyperparameters()
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
        if not isinstance(teacher, SequenceClassificationModule) or list(teacher.labels) != self.labels:
            raise ConfigError(f"task.teacher={path} is not a sequence classifier of labels {self.labels} (got "
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

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if next(self.teacher.parameters()).device != self.device:
            self.teacher.to(self.device)
        with torch.no_grad():
            teacher_logits = self.teacher(batch)  # (B, num_labels)
        parts = {}

        def loss_of() -> torch.Tensor:
            logits = self(batch)  # (B, num_labels)
            hard = F.cross_entropy(logits, batch["labels"])
            soft = soft_target_loss(logits, teacher_logits, self.temperature)
            parts.setdefault("hard_loss", hard.detach())  # the clean pass's (the first call)
            parts.setdefault("soft_loss", soft.detach())
            return self.distill_weights["hard"] * hard + self.distill_weights["soft"] * soft

        loss = self.train_loss(batch, loss_of)
        for key, value in parts.items():
            self.log(f"train/{key}", value, sync_dist=True)
        return loss
