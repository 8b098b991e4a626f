"""Extractive question answering (SQuAD v1.1 style): predict the answer's start and end token.

The head (`network.task_head`, 2 outputs per token) gives start and end logits; the loss is the mean
of the start and end cross-entropies over each window's real tokens (a window without the answer
targets its first token, the [CLS]). Validation and test decode, for every question, the best span
over all its windows (start <= end, at most `max_answer_tokens` long, both ends inside the context
part), map it to characters of the original context through the window's token offsets, and score
it with SQuAD exact match and token F1 (`lmpretrain.metrics.squad`). All windows of a question are in
one batch (`data.qa.QADataModule` batches by record), so decoding is local to a batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric

from lmpretrain.errors import ConfigError
from lmpretrain.metrics.squad import SquadMetrics
from lmpretrain.tasks.adversarial import perturbed
from lmpretrain.tasks.base import FinetuneModule


def best_spans(start_logits: torch.Tensor, end_logits: torch.Tensor, context_mask: torch.Tensor,
               max_answer_tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per window (rows of the (N, T) inputs): the (start, end) maximizing start + end logit with
    start <= end < start + max_answer_tokens and both in `context_mask`. Returns scores (N,) (-inf
    for a window with no context token), starts (N,), ends (N,)."""
    T = start_logits.shape[1]
    i = torch.arange(T, device=start_logits.device)
    length_ok = (i[None, :] >= i[:, None]) & (i[None, :] - i[:, None] < max_answer_tokens)  # (T, T): [start, end]
    allowed = length_ok[None] & context_mask[:, :, None] & context_mask[:, None, :]
    scores = (start_logits.float()[:, :, None] + end_logits.float()[:, None, :]).masked_fill(~allowed, float("-inf"))
    best, flat = scores.flatten(1).max(-1)
    return best, flat // T, flat % T


class ExtractiveQAModule(FinetuneModule):
    """Batches (`QADataModule`): input_ids, token_type_ids, attention_mask, context_mask,
    start_positions, end_positions, example (the question of each window) as tensors over windows;
    context_start, offsets per window and contexts, answers per question as lists. Logs
    `val/loss`, `val/exact_match`, `val/f1` (and `test/*`).

    max_answer_tokens: the longest span (in tokens) decoding may pick.
    match_features: set by `QADataModule(match_features=true)`: batches carry `match` (B, T) flags
        (context token also in the question) and a learned 2-row embedding of them
        (`network.match_emb`, new even when the rest is pretrained) is added to the token embeddings.
    """

    prog_bar_metric = "exact_match"

    def __init__(self, model: dict, max_answer_tokens: int = 64, classifier_dropout: float = 0.1,
                 pooling: str = "auto", optimizer: dict | None = None, scheduler: dict | None = None,
                 match_features: bool = False):
        if max_answer_tokens < 1:
            raise ConfigError(f"task.max_answer_tokens={max_answer_tokens} must be >= 1")
        super().__init__(model, num_outputs=2, pooling=pooling, classifier_dropout=classifier_dropout,
                         optimizer=optimizer, scheduler=scheduler)
        self.max_answer_tokens = max_answer_tokens
        self.match_features = match_features
        if match_features:  # inside the network, like task_head, so DDP / FSDP / the optimizer see it
            self.network.match_emb = torch.nn.Embedding(2, self.network.config.n_embd)
            torch.nn.init.normal_(self.network.match_emb.weight, std=0.02)
        self.save_hyperparameters()
        self.metrics = torch.nn.ModuleDict({
            split: torch.nn.ModuleDict({"loss": MeanMetric(), "squad": SquadMetrics()}) for split in ("val", "test")
        })

    def features(self, batch: dict) -> torch.Tensor:
        if not self.match_features:
            return super().features(batch)
        if "match" not in batch:
            raise ConfigError("this QA model reads exact-match flags (task.match_features) but the batch has none; "
                              "set data.match_features=true")
        # Added where the segment embedding is (before the embedding LayerNorm) through the hook the
        # adversarial methods use, so every architecture's own embedding code stays as it is and only
        # the input text's lookup gets the flags (not an encoder-decoder's decoder lookup).
        with perturbed(self.network.tok_emb, self.network.match_emb(batch["match"])):
            return super().features(batch)

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(start, end) logits, each (N, T) in float32, padding at -inf."""
        logits = self.network.task_head(self.features(batch)).float()  # (N, T, 2)
        start, end = logits.unbind(-1)
        mask = batch.get("attention_mask")
        if mask is not None:
            start, end = (x.masked_fill(mask == 0, float("-inf")) for x in (start, end))
        return start, end

    @staticmethod
    def span_loss(start: torch.Tensor, end: torch.Tensor, batch: dict) -> torch.Tensor:
        return (F.cross_entropy(start, batch["start_positions"]) + F.cross_entropy(end, batch["end_positions"])) / 2

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        start, end = self(batch)
        return self.log_train_loss(self.span_loss(start, end, batch))

    def decode(self, start: torch.Tensor, end: torch.Tensor, batch: dict) -> list[str]:
        """The predicted answer text of each question of the batch: the best-scoring span over all
        its windows, cut from the original context by character offsets."""
        scores, starts, ends = best_spans(start, end, batch["context_mask"], self.max_answer_tokens)
        scores, starts, ends, example = (t.tolist() for t in (scores, starts, ends, batch["example"]))
        best: dict[int, tuple[float, int]] = {}
        for w, q in enumerate(example):
            if scores[w] > float("-inf") and (q not in best or scores[w] > best[q][0]):
                best[q] = (scores[w], w)
        answers = []
        for q, context in enumerate(batch["contexts"]):
            if q not in best:  # no context tokens at all
                answers.append("")
                continue
            w = best[q][1]
            offsets, first = batch["offsets"][w], batch["context_start"][w]
            answers.append(context[offsets[starts[w] - first][0]: offsets[ends[w] - first][1]])
        return answers

    def _eval_step(self, split: str, batch: dict) -> None:
        start, end = self(batch)
        m = self.metrics[split]
        m["loss"].update(self.span_loss(start, end, batch), weight=len(batch["start_positions"]))
        m["squad"].update(self.decode(start, end, batch), batch["answers"])

    @torch.no_grad()
    def predict_answers(self, batch: dict) -> list[str]:
        return self.decode(*self(batch), batch)
