"""Pair similarity (STS-style regression): a score in [0, 1] for two texts, scored by Pearson and
Spearman correlation with the human scores.

    CrossEncoderRegressionModule  one sequence [CLS] a [SEP] b [SEP] -> pooled state -> 1 output ->
                                  sigmoid = the predicted score; MSE against the score
    BiEncoderSimilarityModule     each text embedded alone (pooled state -> a projection initialised
                                  to the identity) -> cosine of the two embeddings = the predicted
                                  score; MSE between cosine and score (Sentence-BERT's
                                  CosineSimilarityLoss) or CoSENT. Zero-shot, straight from a SimCSE
                                  checkpoint (`pretrained=<contrastive ckpt> trainer.max_steps=0`), the
                                  cosine is that of the checkpoint's own pooled embeddings

Batches come from `data.PairSimilarityDataModule` (`data.mode=cross` / `bi`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, PearsonCorrCoef, SpearmanCorrCoef

from lmpretrain.errors import ConfigError
from lmpretrain.models.pooling import pool
from lmpretrain.tasks.base import FinetuneModule

BI_LOSSES = ("mse", "cosent")


def cosent_loss(cos: torch.Tensor, scores: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """CoSENT (Su 2022): log(1 + sum over pairs i, j with score_i > score_j of
    exp(scale * (cos_j - cos_i))): only the order of the cosines is trained, not their values."""
    diff = scale * (cos[None, :] - cos[:, None])  # [i, j] = scale * (cos_j - cos_i)
    diff = diff.masked_fill(~(scores[:, None] > scores[None, :]), float("-inf")).flatten()
    return torch.logsumexp(torch.cat([diff.new_zeros(1), diff]), dim=0)


class PairSimilarityModule(FinetuneModule):
    """What both similarity modules share: predictions in [0, 1] (or cosines), one loss, and
    `val/loss`, `val/pearson`, `val/spearman` (test/* alike) over the whole split."""

    prog_bar_metric = "spearman"

    encoding = ""  # the data.mode whose batches this module reads

    def _metrics(self) -> None:
        # Correlations accumulate in float64: an untrained bi-encoder's cosines can all lie within
        # 1e-5 of each other, where float32 running moments lose the digits Pearson needs.
        self.metrics = torch.nn.ModuleDict({
            split: torch.nn.ModuleDict({"loss": MeanMetric(), "pearson": PearsonCorrCoef().set_dtype(torch.float64),
                                        "spearman": SpearmanCorrCoef().set_dtype(torch.float64)})
            for split in ("val", "test")
        })

    def check_batch(self, batch: dict) -> None:
        if ("input_ids_b" in batch) != (self.encoding == "bi"):
            has = "bi" if "input_ids_b" in batch else "cross"
            raise ConfigError(f"{type(self).__name__} reads data.mode={self.encoding} batches, but the data gives "
                              f"data.mode={has}; set data.mode={self.encoding} (or use the matching task preset)")

    def forward(self, batch: dict) -> torch.Tensor:
        """(B,) predicted similarity of each pair."""
        raise NotImplementedError

    def loss(self, preds: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(preds, scores)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.check_batch(batch)
        return self.log_train_loss(self.loss(self(batch).float(), batch["scores"]))

    def _eval_step(self, split: str, batch: dict) -> None:
        self.check_batch(batch)
        preds, scores = self(batch).float(), batch["scores"]
        m = self.metrics[split]
        m["loss"].update(self.loss(preds, scores), weight=len(scores))
        m["pearson"].update(preds.double(), scores.double())
        m["spearman"].update(preds.double(), scores.double())

    @torch.no_grad()
    def predict_scores(self, batch: dict) -> list[float]:
        return self(batch).float().tolist()


class CrossEncoderRegressionModule(PairSimilarityModule):
    """Batches: input_ids, attention_mask, token_type_ids of [CLS] a [SEP] b [SEP]; scores (B,) in
    [0, 1]. One output on the pooled state; the prediction is its sigmoid (always in [0, 1], the
    range of the scores), trained with MSE against the score."""

    encoding = "cross"

    def __init__(self, model: dict, pooling: str = "auto", classifier_dropout: float = 0.1,
                 optimizer: dict | None = None, scheduler: dict | None = None):
        super().__init__(model, 1, pooling, classifier_dropout, optimizer, scheduler)
        self.save_hyperparameters()
        self._metrics()

    def forward(self, batch: dict) -> torch.Tensor:
        pooled = pool(self.features(batch), batch.get("attention_mask"), self.pooling)  # (B, C)
        return torch.sigmoid(self.network.task_head(pooled).squeeze(-1))


class BiEncoderSimilarityModule(PairSimilarityModule):
    """Batches: input_ids / attention_mask of text a, input_ids_b / attention_mask_b of text b;
    scores (B,) in [0, 1]. Each text -> pooled state -> projection (C x C, initialised to the
    identity, so before training the embedding is the network's own pooled state, as SimCSE
    trained it) -> the prediction is the cosine of the two embeddings.

    loss: mse = (cos - score)^2 (Sentence-BERT's CosineSimilarityLoss); cosent = CoSENT with
        `cosent_scale`, which trains the order of the cosines only (val/loss is then that loss).
    pooling: as the contrastive pretraining pooled (objective.pooling: cls by default) for zero-shot use.
    """

    encoding = "bi"

    def __init__(self, model: dict, pooling: str = "auto", loss: str = "mse", cosent_scale: float = 20.0,
                 classifier_dropout: float = 0.0, optimizer: dict | None = None, scheduler: dict | None = None):
        if loss not in BI_LOSSES:
            raise ConfigError(f"task.loss={loss!r} must be one of {BI_LOSSES}")
        if cosent_scale <= 0:
            raise ConfigError(f"task.cosent_scale={cosent_scale} must be > 0")
        super().__init__(model, 1, pooling, classifier_dropout, optimizer, scheduler)
        self.save_hyperparameters()
        self.loss_name, self.cosent_scale = loss, cosent_scale
        c = self.network.config.n_embd
        projection = nn.Linear(c, c)
        with torch.no_grad():
            projection.weight.copy_(torch.eye(c))
            projection.bias.zero_()
        self.network.task_head = nn.Sequential(nn.Dropout(classifier_dropout), projection)
        self._metrics()

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, T) -> (B, C) embeddings."""
        h = self.features({"input_ids": input_ids, "attention_mask": attention_mask})
        return self.network.task_head(pool(h, attention_mask, self.pooling))

    def forward(self, batch: dict) -> torch.Tensor:
        # Both texts in one forward pass of 2B rows (padded to the longer batch; padding is masked).
        a, b = batch["input_ids"], batch["input_ids_b"]
        ma = batch.get("attention_mask", torch.ones_like(a))
        mb = batch.get("attention_mask_b", torch.ones_like(b))
        T = max(a.size(1), b.size(1))
        ids = torch.cat([F.pad(a, (0, T - a.size(1))), F.pad(b, (0, T - b.size(1)))])
        mask = torch.cat([F.pad(ma, (0, T - ma.size(1))), F.pad(mb, (0, T - mb.size(1)))])
        z = self.embed(ids, mask).float()
        za, zb = z.chunk(2)
        return F.cosine_similarity(za, zb, dim=-1)

    def loss(self, preds: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.loss_name == "cosent":
            return cosent_loss(preds, scores, self.cosent_scale)
        return F.mse_loss(preds, scores)
