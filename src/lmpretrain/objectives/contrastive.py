"""SimCSE (Gao et al. 2021): sentence embeddings by InfoNCE with in-batch negatives.

Unsupervised: the positive of a text is the same text encoded a second time, with different
dropout. Supervised: the positive is its paired text (`input_ids_b`), e.g. a summary and its
description. Every other row of the batch is a negative:

    loss = CE(cos(z_i, z+_j) / temperature, target j = i)

`val/alignment` (mean squared distance of normalized positive pairs, lower = closer) and
`val/uniformity` (log mean Gaussian potential over all pairs, lower = more spread out) are Wang &
Isola's (2020) measures, the ones the SimCSE paper tracks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

from lmpretrain.errors import ConfigError
from lmpretrain.models import GPT, Encoder, EncoderDecoder
from lmpretrain.models.blocks import Block
from lmpretrain.models.pooling import pool
from lmpretrain.module import block_flops_per_token
from lmpretrain.objectives.pretrain import Loss, PretrainModule

MODES = ("unsupervised", "supervised")
POOLINGS = ("cls", "mean")


def info_nce(z: torch.Tensor, z_pos: torch.Tensor, temperature: float) -> torch.Tensor:
    """z, z_pos: (B, C) with row i of each a positive pair; other rows are negatives."""
    sim = F.normalize(z, dim=-1) @ F.normalize(z_pos, dim=-1).T / temperature  # (B, B)
    return F.cross_entropy(sim, torch.arange(len(z), device=z.device))


def alignment(z: torch.Tensor, z_pos: torch.Tensor) -> torch.Tensor:
    return (F.normalize(z, dim=-1) - F.normalize(z_pos, dim=-1)).pow(2).sum(-1).mean()


def uniformity(z: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    return torch.pdist(F.normalize(z, dim=-1)).pow(2).mul(-t).exp().mean().log()


class ContrastiveLoss(Loss):
    needs = (Encoder, GPT, EncoderDecoder)

    def __init__(self, mode: str = "unsupervised", temperature: float = 0.05, pooling: str = "cls"):
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"objective.mode={mode!r} must be one of {MODES}")
        if pooling not in POOLINGS:
            raise ConfigError(f"objective.pooling={pooling!r} must be one of {POOLINGS}")
        if temperature <= 0:
            raise ConfigError(f"objective.temperature={temperature} must be > 0")
        self.mode, self.temperature, self.pooling = mode, temperature, pooling
        self.val_loss, self.val_alignment, self.val_uniformity = MeanMetric(), MeanMetric(), MeanMetric()

    def embed(self, network: nn.Module, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(B, T) -> (B, C): the first ([CLS]) state, or the mean over real tokens."""
        return pool(network.features(ids, mask), mask, self.pooling)  # (B, T, C) -> (B, C)

    def views(self, network: nn.Module, batch: dict, paired: bool) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.embed(network, batch["input_ids"], batch.get("attention_mask"))
        if paired:
            if "input_ids_b" not in batch:
                raise ConfigError("objective.mode=supervised needs paired batches: a data config with "
                                  "_target_ lmpretrain.data.SentencePairDataModule, examples=texts and field_b set")
            return z, self.embed(network, batch["input_ids_b"], batch.get("attention_mask_b"))
        return z, self.embed(network, batch["input_ids"], batch.get("attention_mask"))  # new dropout mask

    def flops_per_token(self, network: nn.Module, seq_len: int) -> float:
        """Two passes of the network's `features` per counted token (unsupervised: two dropout views of
        each text; supervised: the text and its positive, whose tokens the throughput count leaves
        out). No LM head runs and the embedding table is a lookup: the blocks only (a T5's encoder's)."""
        blocks = list(network.encoder) if isinstance(network, EncoderDecoder) else \
            [m for m in network.modules() if isinstance(m, Block)]
        return 2 * block_flops_per_token(blocks, network.config.n_embd, seq_len)

    def forward(self, network, batch, seed):
        z, z_pos = self.views(network, batch, paired=self.mode == "supervised")
        return {"loss": info_nce(z, z_pos, self.temperature)}

    def val_update(self, network, batch, seed):
        paired = "input_ids_b" in batch
        if not paired and not any(m.p > 0 for m in network.modules() if isinstance(m, nn.Dropout)):
            raise ConfigError("unsupervised SimCSE without text pairs needs model.dropout > 0 (its two views differ "
                              "only by dropout)")
        # Without pairs the positives are dropout views, so dropout stays on for them.
        was_training = network.training
        network.train(not paired)
        z, z_pos = self.views(network, batch, paired)
        network.train(was_training)
        self.val_loss.update(info_nce(z, z_pos, self.temperature))
        self.val_alignment.update(alignment(z, z_pos))
        self.val_uniformity.update(uniformity(z))

    def val_compute(self):
        return {"loss": self.val_loss.compute(), "alignment": self.val_alignment.compute(),
                "uniformity": self.val_uniformity.compute()}


class ContrastiveModule(PretrainModule):
    """`objective=contrastive`: SimCSE on any network with `features` (Encoder, GPT, encoder of a T5)."""

    def __init__(self, model: dict, mode: str = "unsupervised", temperature: float = 0.05, pooling: str = "cls",
                 optimizer: dict | None = None, scheduler: dict | None = None, seed: int = 0):
        super().__init__(model, optimizer, scheduler, seed)
        self.save_hyperparameters()
        self.set_losses({"contrastive": ContrastiveLoss(mode, temperature, pooling)})
