"""What a dashboard shows besides scalars, also written as files into the run folder so that a run
without wandb has them too:

- `SampleGenerations` (causal LMs): every N optimizer steps, continuations of fixed prompts ->
  `samples.jsonl`, a wandb table (`samples`, growing: one row per prompt and step), TensorBoard text.
- `ClassificationReport` (sequence classification): on the test split, the confusion matrix and
  per-class precision / recall / F1 / support -> `confusion_matrix.csv`, `confusion_matrix.png`,
  `per_class.csv`, a wandb table `per_class` and image `confusion_matrix`.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import lightning as L
import torch

log = logging.getLogger(__name__)


def _loggers(trainer: L.Trainer, name: str) -> list:
    return [lg for lg in trainer.loggers if type(lg).__name__ == name]


class SampleGenerations(L.Callback):
    """every_n_steps=0: off. Sampling is seeded (the same prompts and seed each time), so the rows
    of one prompt show how the model's continuation changes with training, not sampling noise."""

    def __init__(self, output_dir: str, every_n_steps: int = 0, prompts: list[str] | tuple[str, ...] = ("\n",),
                 max_new_tokens: int = 64, temperature: float = 0.8, top_k: int | None = 50, seed: int = 1337):
        self.output_dir = Path(output_dir)
        self.every_n_steps = int(every_n_steps)
        self.prompts = list(prompts)
        self.max_new_tokens, self.temperature, self.top_k, self.seed = max_new_tokens, temperature, top_k, seed
        self.rows: list[list] = []
        self._warned = False

    def _usable(self, trainer, pl_module) -> bool:
        from lmpretrain.objectives import CausalLMModule

        if not isinstance(pl_module, CausalLMModule) or pl_module.tokenizer_json is None:
            return False
        if any(type(p).__name__ == "DTensor" for p in pl_module.network.parameters()):
            if not self._warned and trainer.is_global_zero:
                log.warning("callbacks.samples: skipped, the network is sharded (FSDP/TP); generate from a "
                            "checkpoint instead (python -m lmpretrain.generate)")
            self._warned = True
            return False
        return True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if (not self.every_n_steps or step % self.every_n_steps or not trainer.is_global_zero
                or (self.rows and self.rows[-1][0] == step) or not self._usable(trainer, pl_module)):
            return  # several micro-batches end on one step under gradient accumulation: once per step
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(pl_module.tokenizer_json)
        was_training = pl_module.training
        new_rows = []
        for prompt in self.prompts:
            ids = tokenizer.encode(prompt, add_special_tokens=False).ids or [0]
            idx = torch.tensor([ids], dtype=torch.long, device=pl_module.device)
            generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
            out = pl_module.generate(idx, self.max_new_tokens, self.temperature, self.top_k, generator)
            text = tokenizer.decode(out[0, len(ids):].tolist(), skip_special_tokens=False)
            new_rows.append([step, prompt, text])
        pl_module.train(was_training)
        self.rows.extend(new_rows)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / "samples.jsonl", "a") as f:
            f.writelines(json.dumps({"step": s, "prompt": p, "text": t}) + "\n" for s, p, t in new_rows)
        for lg in _loggers(trainer, "WandbLogger"):
            lg.log_table("samples", columns=["step", "prompt", "continuation"], data=self.rows, step=step)
        for lg in _loggers(trainer, "TensorBoardLogger"):
            for s, p, t in new_rows:
                lg.experiment.add_text("samples", f"**{p!r}** {t}", global_step=s)


class ClassificationReport(L.Callback):
    """Runs after the test split of a sequence-classification run (`evaluate_test: true`)."""

    def __init__(self, output_dir: str):
        self.output_dir = Path(output_dir)
        self._matrix = None

    @staticmethod
    def _applies(pl_module) -> bool:
        from lmpretrain.tasks.classification import SequenceClassificationModule

        return isinstance(pl_module, SequenceClassificationModule)

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        if self._applies(pl_module):
            from torchmetrics.classification import MulticlassConfusionMatrix

            self._matrix = MulticlassConfusionMatrix(len(pl_module.labels)).to(pl_module.device)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._matrix is not None:
            with torch.no_grad():
                self._matrix.update(pl_module(batch).argmax(-1), batch["labels"])

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        if self._matrix is None:
            return
        matrix = self._matrix.compute().cpu().long()  # rows: true label, columns: predicted; all ranks
        self._matrix = None
        if trainer.is_global_zero:
            self.write(matrix, list(pl_module.labels), trainer)

    def write(self, matrix: torch.Tensor, labels: list[str], trainer=None) -> list[dict]:
        tp = matrix.diag().double()
        support, predicted = matrix.sum(1).double(), matrix.sum(0).double()
        precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
        recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
        f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12),
                         torch.zeros_like(tp))
        rows = [{"label": lab, "precision": round(float(p), 4), "recall": round(float(r), 4), "f1": round(float(f), 4),
                 "support": int(s)} for lab, p, r, f, s in zip(labels, precision, recall, f1, support)]
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / "per_class.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        with open(self.output_dir / "confusion_matrix.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["true \\ predicted", *labels])
            for lab, row in zip(labels, matrix.tolist()):
                w.writerow([lab, *row])
        png = self._plot(matrix, labels)
        if trainer is not None:
            for lg in _loggers(trainer, "WandbLogger"):
                lg.log_table("per_class", columns=list(rows[0]), data=[list(r.values()) for r in rows])
                lg.log_image("confusion_matrix", [str(png)])
        log.info("per-class scores: %s", self.output_dir / "per_class.csv")
        return rows

    def _plot(self, matrix: torch.Tensor, labels: list[str]) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        n = len(labels)
        size = min(14, 2 + 0.3 * n)
        fig, ax = plt.subplots(figsize=(size, size))
        ax.imshow(matrix.numpy(), cmap="Blues")
        ax.set_xticks(range(n), labels, rotation=90, fontsize=max(4, 9 - n // 10))
        ax.set_yticks(range(n), labels, fontsize=max(4, 9 - n // 10))
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if n <= 12:
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=8)
        fig.tight_layout()
        out = self.output_dir / "confusion_matrix.png"
        fig.savefig(out, dpi=80)
        plt.close(fig)
        return out
