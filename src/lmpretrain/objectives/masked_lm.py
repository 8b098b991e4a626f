"""Masked language modelling (BERT) and the sentence-pair tasks that go with it (NSP, ALBERT's SOP).

Masking lives here and only here: `mask_tokens` selects 15% of the maskable tokens (optionally
whole words), replaces 80% of those with [MASK], 10% with a random ordinary token and leaves 10%
unchanged; the loss is computed on the selected positions only. Special tokens ([CLS], [SEP],
[PAD], ...) are never selected. The sentence pairs themselves (segment ids, NSP/SOP labels) are
built by the data module (`lmpretrain.data.sentence_pairs`), which sees whole documents.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torchmetrics import MeanMetric

from lmpretrain.errors import ConfigError
from lmpretrain.metrics import TokenNLL
from lmpretrain.models.blocks import Block
from lmpretrain.models.encoder import Encoder
from lmpretrain.module import block_flops_per_token
from lmpretrain.objectives.pretrain import Loss, PretrainModule, token_id, torch_generator

PAIR_TASKS = ("nsp", "sop")


@dataclass
class MaskingConfig:
    probability: float = 0.15  # share of maskable tokens (or words) selected for prediction
    mask_fraction: float = 0.8  # of the selected: replaced by [MASK]
    random_fraction: float = 0.1  # of the selected: replaced by a random token (the rest: unchanged)
    whole_word: bool = False  # select whole words: all sub-tokens of a word or none

    def __post_init__(self) -> None:
        if not 0.0 < self.probability < 1.0:
            raise ConfigError(f"objective.masking.probability={self.probability} must be in (0, 1)")
        if self.mask_fraction < 0 or self.random_fraction < 0 or self.mask_fraction + self.random_fraction > 1:
            raise ConfigError("objective.masking.mask_fraction + random_fraction must be within [0, 1], each >= 0")


def word_start_table(tok: Tokenizer) -> torch.Tensor:
    """(vocab,) bool: does this token begin a word? WordPiece marks continuations ("##"), byte-level
    BPE marks word starts with "Ġ" (a space), Metaspace/unigram with "▁". Other tokenizers (char):
    every token is its own word. Special tokens always start one."""
    spec = json.loads(tok.to_str())
    pre = json.dumps(spec.get("pre_tokenizer"))
    if spec["model"]["type"] == "WordPiece":
        prefix = spec["model"].get("continuing_subword_prefix") or "##"
        is_start = lambda t: not t.startswith(prefix)
    elif "ByteLevel" in pre:
        is_start = lambda t: t.startswith("Ġ")
    elif "Metaspace" in pre:
        is_start = lambda t: t.startswith("▁")
    else:
        is_start = lambda t: True
    table = torch.ones(tok.get_vocab_size(), dtype=torch.bool)
    for token, i in tok.get_vocab(with_added_tokens=True).items():
        table[i] = is_start(token)
    table[list(tok.get_added_tokens_decoder())] = True
    return table


def mask_tokens(
    input_ids: torch.Tensor,
    maskable: torch.Tensor,
    mask_id: int,
    random_ids: torch.Tensor,
    cfg: MaskingConfig,
    generator: torch.Generator,
    word_starts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption. input_ids, maskable, word_starts: (B, T); random_ids: (R,) the ids a random
    replacement draws from. Returns (corrupted inputs, labels): labels hold the original id at
    selected positions and -100 elsewhere."""
    B, T = input_ids.shape
    dev = input_ids.device
    u = torch.rand(B, T, generator=generator, device=dev)
    if word_starts is not None:
        # One draw per word: every token reads the draw of its word's index (0, 1, ... per row).
        word_index = (word_starts.long().cumsum(dim=1) - 1).clamp(min=0)  # (B, T)
        u = u.gather(1, word_index)
    selected = (u < cfg.probability) & maskable
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, -100))
    r = torch.rand(B, T, generator=generator, device=dev)
    to_mask = selected & (r < cfg.mask_fraction)
    to_random = selected & (r >= cfg.mask_fraction) & (r < cfg.mask_fraction + cfg.random_fraction)
    random_tokens = random_ids[torch.randint(len(random_ids), (B, T), generator=generator, device=dev)]
    corrupted = torch.where(to_mask, torch.full_like(input_ids, mask_id), input_ids)
    corrupted = torch.where(to_random, random_tokens, corrupted)
    return corrupted, labels


class SentencePairLoss(Loss):
    """NSP or SOP: a 2-way classifier on the pooled [CLS] state; batches carry `pair_label`."""

    needs = (Encoder,)

    def __init__(self, kind: str = "sop"):
        super().__init__()
        if kind not in PAIR_TASKS:
            raise ConfigError(f"objective pair task {kind!r} must be one of {PAIR_TASKS} or null")
        self.kind = kind
        self.val_loss, self.val_acc = MeanMetric(), MeanMetric()

    def logits(self, network: Encoder, h: torch.Tensor) -> torch.Tensor:
        return network.pair_head(network.pool(h))  # (B, 2)

    def loss_and_acc(self, network: Encoder, h: torch.Tensor, batch: dict):
        if "pair_label" not in batch:
            raise ConfigError(f"objective {self.kind} needs sentence-pair batches: use a data config with "
                              f"_target_ lmpretrain.data.SentencePairDataModule and data.examples={self.kind}")
        logits = self.logits(network, h)
        loss = F.cross_entropy(logits, batch["pair_label"])
        return loss, (logits.argmax(-1) == batch["pair_label"]).float().mean()

    def forward(self, network, batch, seed):
        loss, _ = self.loss_and_acc(network, network.features(*encoder_inputs(batch)), batch)
        return {"loss": loss}

    def flops_per_token(self, network: Encoder, seq_len: int) -> float:
        """The blocks only: no MLM head runs in a pair-only step."""
        return encoder_flops_per_token(network, seq_len)

    def val_update(self, network, batch, seed):
        loss, acc = self.loss_and_acc(network, network.features(*encoder_inputs(batch)), batch)
        self.val_loss.update(loss)
        self.val_acc.update(acc)

    def val_compute(self):
        return {"loss": self.val_loss.compute(), f"{self.kind}_acc": self.val_acc.compute()}


def encoder_flops_per_token(network: Encoder, seq_len: int, mlm_head_share: float = 0.0) -> float:
    """Training FLOPs per token of the encoder's blocks (every token) and of its MLM head on a
    `mlm_head_share` of the tokens. A pair head (NSP/SOP) runs once a sequence: left out."""
    blocks = [m for m in network.modules() if isinstance(m, Block)]
    n_head = sum(p.numel() for p in network.mlm_head.parameters()) if mlm_head_share else 0  # tied embedding too
    return block_flops_per_token(blocks, network.config.n_embd, seq_len, mlm_head_share * n_head)


def encoder_inputs(batch: dict) -> tuple:
    return batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids")


class MaskedLMLoss(Loss):
    """MLM loss on the selected positions, plus an optional NSP/SOP loss on the same pass (summed,
    as BERT and ALBERT do)."""

    needs = (Encoder,)

    def __init__(self, masking: dict | None = None, pair: str | None = None, mask_token: str = "[MASK]"):
        super().__init__()
        self.cfg = MaskingConfig(**(masking or {}))
        self.mask_token = mask_token
        self.pair = SentencePairLoss(pair) if pair else None
        self.val_nll = TokenNLL()
        self.val_acc = MeanMetric()
        self.mask_id: int | None = None

    def connect(self, tok: Tokenizer, runtime=None) -> None:
        self.mask_id = token_id(tok, self.mask_token, "objective.mask_token")
        special = torch.zeros(tok.get_vocab_size(), dtype=torch.bool)
        special[list(tok.get_added_tokens_decoder())] = True
        # Tables as non-persistent buffers: they follow the module to its device, stay out of checkpoints.
        self.register_buffer("special", special, persistent=False)
        self.register_buffer("random_ids", torch.nonzero(~special).flatten(), persistent=False)
        self.register_buffer("word_start", word_start_table(tok), persistent=False)

    def maskable(self, batch: dict) -> torch.Tensor:
        """(B, T) bool: the real, non-special tokens. Ids past the tokenizer's vocabulary (a
        model.vocab_size padded up) count as special."""
        ids = batch["input_ids"]
        special = self.special.to(ids.device)
        maskable = ~special[ids.clamp(max=len(special) - 1)] & (ids < len(special))
        if "attention_mask" in batch:
            maskable &= batch["attention_mask"].bool()
        return maskable

    def corrupt(self, batch: dict, seed: int, maskable: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(corrupted inputs, labels) of `batch`; `maskable`: `self.maskable(batch)` if the caller has it."""
        if self.mask_id is None:
            raise RuntimeError("the module has no tokenizer yet; call module.connect(tokenizer_json=...) first")
        ids = batch["input_ids"]
        special = self.special.to(ids.device)
        maskable = self.maskable(batch) if maskable is None else maskable
        starts = self.word_start.to(ids.device)[ids.clamp(max=len(special) - 1)] if self.cfg.whole_word else None
        return mask_tokens(ids, maskable, self.mask_id, self.random_ids.to(ids.device), self.cfg,
                           torch_generator(seed, ids.device), starts)

    def flops_per_token(self, network: Encoder, seq_len: int) -> float:
        """The MLM head (transform + the tied vocabulary projection, most of BERT-Tiny's matmul
        weights) runs on the selected positions only (`_losses`), a `masking.probability` share.
        Counting it for every token, as 6N does, put BERT-Tiny's MFU ~3x too high, and a rate above
        the cached CPU peak raises that peak for every later run (callbacks/throughput.py)."""
        return encoder_flops_per_token(network, seq_len, mlm_head_share=self.cfg.probability)

    def _losses(self, network: Encoder, batch: dict, seed: int):
        corrupted, labels = self.corrupt(batch, seed)
        h = network.features(corrupted, batch.get("attention_mask"), batch.get("token_type_ids"))  # (B, T, C)
        selected = labels != -100
        logits = network.mlm_head(h[selected])  # (N, V): the head runs on the selected positions only
        targets = labels[selected]
        mlm = F.cross_entropy(logits, targets) if len(targets) else h.sum() * 0.0
        acc = (logits.argmax(-1) == targets).float().mean() if len(targets) else None
        pair = self.pair.loss_and_acc(network, h, batch) if self.pair is not None else None
        return mlm, acc, len(targets), pair

    def forward(self, network, batch, seed):
        mlm, _, _, pair = self._losses(network, batch, seed)
        if pair is None:
            return {"loss": mlm}
        return {"loss": mlm + pair[0], "mlm_loss": mlm, f"{self.pair.kind}_loss": pair[0]}

    def val_update(self, network, batch, seed):
        mlm, acc, n, pair = self._losses(network, batch, seed)
        if n:
            self.val_nll.update(mlm, n)
            self.val_acc.update(acc, weight=n)
        if pair is not None:
            self.pair.val_loss.update(pair[0])
            self.pair.val_acc.update(pair[1])

    def val_compute(self):
        mlm = self.val_nll.compute()
        out = {"mlm_acc": self.val_acc.compute(), "ppl": self.val_nll.perplexity()}
        if self.pair is None:
            return {"loss": mlm, **out}
        pair = self.pair.val_compute()
        return {"loss": mlm + pair["loss"], "mlm_loss": mlm, **out, f"{self.pair.kind}_loss": pair["loss"],
                f"{self.pair.kind}_acc": pair[f"{self.pair.kind}_acc"]}

    def val_reset(self):
        super().val_reset()
        if self.pair is not None:
            self.pair.val_reset()


class MaskedLMModule(PretrainModule):
    """`objective=mlm` (pair: null), `mlm_nsp` (pair: nsp), `mlm_sop` (pair: sop) on an Encoder."""

    def __init__(self, model: dict, masking: dict | None = None, pair: str | None = None,
                 mask_token: str = "[MASK]", optimizer: dict | None = None, scheduler: dict | None = None,
                 seed: int = 0):
        super().__init__(model, optimizer, scheduler, seed)
        self.save_hyperparameters()
        self.set_losses({"mlm": MaskedLMLoss(masking, pair, mask_token)})
