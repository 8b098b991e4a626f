"""`objective=distill`: pretrain a student (causal LM on a GPT, masked LM on an encoder) against a
frozen teacher: any lmpretrain checkpoint or a local HF GPT-2 / BERT folder of the same family and
tokenizer.

    loss = hard * (the student's own CLM / MLM loss)
         + soft * T^2 KL(teacher || student) at temperature T, on the positions the hard loss scores
         + hidden * MSE(projection(student layer), teacher layer) over `layer_map`
         + attention * KL of the attention distributions over `layer_map` (blocks >= 1)

(`lmpretrain.distill` holds the losses.) Both networks read the same (for MLM: the same corrupted)
inputs. Validation is the student's plain objective (`val/loss`, `val/ppl`, `val/mlm_acc`), so a
distilled run compares directly with one trained without a teacher, and needs no teacher.

The teacher is not a submodule: it is kept out of the module tree (attribute set on the instance
dict), so it is never in `state_dict()` / checkpoints, never wrapped by DDP (no gradient sync, no
bucket), never sharded by FSDP2, never in the optimizer, and Lightning's `.train()` cannot switch
it out of eval mode. It is loaded when fitting starts (`setup("fit")`, on every rank: under DDP and
FSDP2 each process holds a full replica, in eval mode, `requires_grad=False`) and follows the
batch's device. So a student checkpoint holds the student alone and `load_module` rebuilds it
without the teacher file. The learned projections (hidden loss, widths that differ) are trained,
live in `losses.distill.projection` (saved, outside `network.*`, so `pretrained=` fine-tuning reads
the student network only), are optimized with the network, synced by DDP like any parameter and
sharded by FSDP2 as a unit of their own. `runtime.fused_loss` does not apply: the soft targets need
the student's logits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from lmpretrain.distill import (
    HiddenProjection,
    LayerCapture,
    attention_loss,
    attention_mask_of,
    check_layer_map,
    hidden_state_loss,
    init_from_teacher,
    soft_target_loss,
    uniform_layer_map,
)
from lmpretrain.errors import ConfigError
from lmpretrain.models import GPT, Encoder
from lmpretrain.module import RuntimeOptions
from lmpretrain.objectives.causal_lm import CausalLMLoss
from lmpretrain.objectives.masked_lm import MaskedLMLoss
from lmpretrain.objectives.pretrain import Loss, PretrainModule, derive_seed

# What a student checkpoint remembers of its teacher: enough to rebuild the projections.
TEACHER_KEYS = ("arch", "n_layer", "n_head", "n_embd", "vocab_size", "block_size")


@dataclass
class DistillWeights:
    hard: float = 0.5  # the student's own CLM / MLM loss on the labels
    soft: float = 0.5  # KL to the teacher's softened distribution, x T^2
    hidden: float = 0.0  # hidden-state MSE through the learned projection
    attention: float = 0.0  # attention-distribution KL

    def __post_init__(self) -> None:
        values = asdict(self)
        if any(not v >= 0 for v in values.values()) or sum(values.values()) <= 0:
            raise ConfigError(f"objective.weights={values} must each be >= 0 with a positive sum")

    @classmethod
    def from_dict(cls, values: dict | None) -> DistillWeights:
        values = dict(values or {})
        if unknown := sorted(set(values) - set(cls.__dataclass_fields__)):
            raise ConfigError(f"objective.weights has unknown key(s) {unknown}; use hard, soft, hidden, attention")
        return cls(**{k: float(v) for k, v in values.items()})


def network_outputs(network: nn.Module, inputs: torch.Tensor, batch: dict, selected: torch.Tensor) -> torch.Tensor:
    """Logits (N, V) of the selected positions (selected: (B, T) bool) for a GPT or an encoder."""
    if isinstance(network, GPT):
        return network.lm_head(network.features(inputs)[selected])
    h = network.features(inputs, batch.get("attention_mask"), batch.get("token_type_ids"))  # (B, T, C)
    return network.mlm_head(h[selected])  # the head runs on the selected positions only


class DistillLoss(Loss):
    """The student's objective plus the teacher terms. `set_teacher` hands it the frozen teacher."""

    needs = (GPT, Encoder)

    def __init__(self, causal: bool, temperature: float = 2.0, weights: dict | None = None,
                 layer_map: list | None = None, masking: dict | None = None, mask_token: str = "[MASK]"):
        super().__init__()
        if not temperature > 0:
            raise ConfigError(f"objective.temperature={temperature} must be > 0")
        self.causal, self.temperature = causal, float(temperature)
        self.weights = DistillWeights.from_dict(weights)
        self.layer_map = layer_map
        # Validation, token tables and masking are the student objective's own.
        self.base = CausalLMLoss() if causal else MaskedLMLoss(masking, None, mask_token)
        self.uses_every_parameter = self.base.uses_every_parameter
        self.projection: HiddenProjection | None = None
        self.pairs: list[tuple[int, int]] = []
        self.__dict__["teacher"] = None  # outside the module tree: see the module docstring
        self.__dict__["captures"] = None

    def connect(self, tokenizer: Tokenizer, runtime: RuntimeOptions) -> None:
        self.base.connect(tokenizer, runtime)

    def uses_layers(self) -> bool:
        return self.weights.hidden > 0 or self.weights.attention > 0

    def resolve_layer_map(self, student: dict, teacher: dict) -> list[tuple[int, int]]:
        """`layer_map` as checked (student, teacher) pairs; null: the uniform map."""
        return check_layer_map(self.layer_map or uniform_layer_map(student["n_layer"], teacher["n_layer"]),
                               student["n_layer"], teacher["n_layer"])

    def build(self, student: dict, teacher: dict, seed: int = 0) -> None:
        """Resolve the layer map and create the projections; `student`/`teacher`: model config dicts.

        The projections are initialized from `seed`, not the global RNG: they are made at setup("fit"),
        when how much the global stream has been drawn depends on the process count (one process and
        two DDP ranks would start from different projections) and, under FSDP2, which no broadcast
        makes equal across ranks."""
        if not self.uses_layers():
            return
        self.pairs = self.resolve_layer_map(student, teacher)
        if self.weights.hidden > 0 and self.projection is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.projection = HiddenProjection(len(self.pairs), student["n_embd"], teacher["n_embd"])

    def set_teacher(self, teacher: nn.Module) -> None:
        teacher.eval().requires_grad_(False)
        self.__dict__["teacher"] = teacher
        self.__dict__["captures"] = None  # hooks go on at the first step (the student may be wrapped by then)

    @property
    def attention_pairs(self) -> list[tuple[int, int]]:
        return [(s, t) for s, t in self.pairs if s >= 1 and t >= 1] if self.weights.attention > 0 else []

    def _captures(self, network: nn.Module) -> tuple[LayerCapture, LayerCapture]:
        if self.captures is None:
            hidden = self.pairs if self.weights.hidden > 0 else []
            student = LayerCapture(network, [s for s, _ in hidden], [s for s, _ in self.attention_pairs])
            teacher = LayerCapture(self.teacher, [t for _, t in hidden], [t for _, t in self.attention_pairs])
            self.__dict__["captures"] = (student, teacher)
        return self.captures

    def inputs(self, batch: dict, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(the inputs both networks read, labels with -100 where nothing is predicted)."""
        if self.causal:
            return batch["input_ids"], batch["labels"]
        return self.base.corrupt(batch, seed)

    def forward(self, network, batch, seed):
        if self.teacher is None:
            raise RuntimeError("DistillLoss has no teacher; DistillModule.load_teacher() runs at setup('fit')")
        inputs, labels = self.inputs(batch, seed)
        if next(self.teacher.parameters()).device != inputs.device:
            self.teacher.to(inputs.device)
        selected = labels != -100  # (B, T)
        student_cap, teacher_cap = self._captures(network) if self.uses_layers() else (None, None)
        with student_cap.recording() if student_cap else _nothing():
            logits = network_outputs(network, inputs, batch, selected)  # (N, V)
        targets = labels[selected]
        hard = F.cross_entropy(logits.float(), targets) if len(targets) else logits.sum() * 0.0
        out = {"hard_loss": hard}
        loss = self.weights.hard * hard
        if self.weights.soft > 0 or teacher_cap:  # soft = 0 and no layer terms: the teacher has nothing to say
            with torch.no_grad(), teacher_cap.recording() if teacher_cap else _nothing():
                teacher_logits = network_outputs(self.teacher, inputs, batch, selected)
        if self.weights.soft > 0:
            out["soft_loss"] = soft_target_loss(logits, teacher_logits, self.temperature)
            loss = loss + self.weights.soft * out["soft_loss"]
        valid = batch["attention_mask"].bool() if "attention_mask" in batch else None  # (B, T)
        if self.weights.hidden > 0:
            out["hidden_loss"] = hidden_state_loss([student_cap.hidden[s] for s, _ in self.pairs],
                                                   [teacher_cap.hidden[t] for _, t in self.pairs],
                                                   self.projection, valid)
            loss = loss + self.weights.hidden * out["hidden_loss"]
        if self.attention_pairs:
            allowed = attention_mask_of(inputs.size(1), self.causal, batch.get("attention_mask"), inputs.device)
            out["attention_loss"] = torch.stack([
                attention_loss(student_cap.scores(s), teacher_cap.scores(t), allowed, valid)
                for s, t in self.attention_pairs]).mean()
            loss = loss + self.weights.attention * out["attention_loss"]
        return {"loss": loss, **out}

    def val_update(self, network, batch, seed):
        self.base.val_update(network, batch, seed)

    def val_compute(self):
        return self.base.val_compute()

    def val_reset(self):
        self.base.val_reset()


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


class DistillModule(PretrainModule):
    """`objective=distill`: the student is `model` (a GPT: causal LM; a BERT encoder: masked LM),
    the teacher `teacher` (a .ckpt path or an HF GPT-2/BERT folder) of the same family and tokenizer.

    teacher_model: filled in from the teacher when it is loaded (its shape, `TEACHER_KEYS`) and saved
    with the student, so a checkpoint rebuilds its projections without the teacher; leave it unset.
    """

    def __init__(self, model: dict, teacher: str | None = None, temperature: float = 2.0,
                 weights: dict | None = None, layer_map: list | None = None, masking: dict | None = None,
                 mask_token: str = "[MASK]", init_from_teacher: bool = False, teacher_model: dict | None = None,
                 optimizer: dict | None = None, scheduler: dict | None = None, seed: int = 0):
        super().__init__(model, optimizer, scheduler, seed)
        self.save_hyperparameters()
        if not isinstance(self.network, (GPT, Encoder)):
            raise ConfigError(f"objective=distill needs a GPT (causal LM) or BERT encoder (masked LM) student; "
                              f"got {type(self.network).__name__}")
        self.set_losses({"distill": DistillLoss(isinstance(self.network, GPT), temperature, weights, layer_map,
                                                masking, mask_token)})
        if teacher_model:
            self.distill.build(self.student_shape(), teacher_model, self.projection_seed)

    @property
    def distill(self) -> DistillLoss:
        return self.losses["distill"]

    @property
    def projection_seed(self) -> int:
        return derive_seed(self.seed, 2)  # 0: training steps, 1: validation (objectives/pretrain.py)

    def student_shape(self) -> dict:
        c = self.network.config
        return {"arch": "gpt" if isinstance(self.network, GPT) else "bert",
                **{k: getattr(c, k) for k in TEACHER_KEYS[1:]}}

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.distill.teacher is None:
            teacher = self.load_teacher()
            if self.hparams.get("init_from_teacher"):
                # Before any sharding or wrapping, on every rank alike; a resumed run then loads its
                # checkpoint over these weights, so only a fresh run starts from the teacher's.
                pairs = self.distill.resolve_layer_map(self.student_shape(), self.hparams["teacher_model"])
                init_from_teacher(self.network, teacher, pairs)

    def load_teacher(self) -> nn.Module:
        """Load, check and freeze the teacher (also called by `setup("fit")`); one ConfigError for a
        missing file, another model family, another vocabulary or too short a context."""
        from lmpretrain.export.source import load_source

        path = self.hparams.get("teacher")
        if not path:
            raise ConfigError("objective=distill needs objective.teacher=<a .ckpt from lmpretrain.train or a "
                              "folder with an HF GPT-2/BERT model>")
        source = load_source(path, "objective.teacher")
        net = source.network
        if not isinstance(net, type(self.network)):
            raise ConfigError(f"objective.teacher={path} is a {type(net).__name__}, the student a "
                              f"{type(self.network).__name__}; distill within one family (gpt -> gpt, bert -> bert)")
        theirs, ours = net.config.vocab_size, self.network.config.vocab_size
        same_tokens = True
        if source.tokenizer_json and self.tokenizer_json:
            same_tokens = (Tokenizer.from_str(source.tokenizer_json).get_vocab(with_added_tokens=True)
                           == Tokenizer.from_str(self.tokenizer_json).get_vocab(with_added_tokens=True))
        if theirs != ours or not same_tokens:
            raise ConfigError(f"objective.teacher={path} has a vocabulary of {theirs} tokens, the student {ours}"
                              f"{'' if same_tokens else ' with other token ids'}; the teacher and student must share "
                              f"a tokenizer: train the student with the teacher's tokenizer= and data= settings")
        if net.config.block_size < self.network.config.block_size:
            raise ConfigError(f"objective.teacher={path} covers {net.config.block_size} positions, the student "
                              f"reads {self.network.config.block_size}; set model.block_size<={net.config.block_size}")
        shape = {"arch": source.arch, **{k: getattr(net.config, k) for k in TEACHER_KEYS[1:]}}
        saved = self.hparams.get("teacher_model")
        if saved and {k: saved.get(k) for k in ("n_layer", "n_embd")} != {k: shape[k] for k in ("n_layer", "n_embd")}:
            raise ConfigError(f"objective.teacher={path} is shaped {shape}, but this student was distilled from "
                              f"{saved}; resume with the teacher it was trained with")
        self.hparams["teacher_model"] = shape  # saved with the student (see the class docstring)
        self.distill.build(self.student_shape(), shape, self.projection_seed)
        self.distill.set_teacher(net)
        return net

    def trained_modules(self) -> nn.ModuleList:
        """What the optimizer updates: the student network and the hidden-state projections."""
        return nn.ModuleList([self.network, *([self.distill.projection] if self.distill.projection else [])])

    def configure_model(self) -> None:
        first = not self._model_configured
        super().configure_model()
        shard = getattr(self.trainer.strategy, "shard", None) if self._trainer is not None else None
        projection = self.distill.projection
        if first and shard is not None and projection is not None and any(True for _ in projection.parameters()):
            shard(projection)  # FSDP2: its gradients are reduced across ranks like the network's

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        projection = self.distill.projection
        if gradient_clip_val and projection is not None and gradient_clip_algorithm in (None, "norm"):
            grads = [p for p in projection.parameters() if p.grad is not None]
            if grads:  # clipped on its own: the network's norm (logged as train/grad_norm) stays the student's
                torch.nn.utils.clip_grad_norm_(grads, float(gradient_clip_val))
