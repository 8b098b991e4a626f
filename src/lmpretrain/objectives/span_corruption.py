"""T5 span corruption (Raffel et al. 2020, "i.i.d. spans"): drop 15% of the tokens in spans of mean
length 3, put one sentinel in the encoder input for each dropped span, and train the decoder to
emit each sentinel followed by the span it stands for.

    tokens   : a b c d e f g h
    inputs   : a <s0> d e <s1> h </s>
    targets  : <s0> b c <s1> f g </s>

Sentinels are ids past the tokenizer's vocabulary (T5's extra_ids): the network is built with
`model.vocab_size + n_sentinels` rows, sentinel k is `model.vocab_size + k`. Checkpoints save the
model config as built (sentinel rows included) and `sentinel0`, so fine-tuning rebuilds the same
network. Span counts depend only on the sequence length, so every row of a packed batch corrupts to
the same input/target lengths and nothing needs padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torchmetrics import MeanMetric

from lmpretrain.errors import ConfigError
from lmpretrain.metrics import TokenNLL
from lmpretrain.models.encdec import EncoderDecoder
from lmpretrain.objectives.pretrain import Loss, PretrainModule, token_id


@dataclass
class SpanConfig:
    noise_density: float = 0.15
    mean_span_length: float = 3.0
    n_sentinels: int = 100  # extra ids appended to the vocabulary (T5: 100)

    def __post_init__(self) -> None:
        if not 0.0 < self.noise_density < 1.0:
            raise ConfigError(f"objective.noise_density={self.noise_density} must be in (0, 1)")
        if self.mean_span_length < 1:
            raise ConfigError(f"objective.mean_span_length={self.mean_span_length} must be >= 1")

    def counts(self, length: int) -> tuple[int, int]:
        """(noise tokens, noise spans) for a sequence of `length` tokens (T5's rounding)."""
        n_noise = min(max(round(length * self.noise_density), 1), length - 1)
        n_spans = max(round(n_noise / self.mean_span_length), 1)
        return n_noise, n_spans


def _partition(n_items: int, n_parts: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random split of n_items into n_parts positive lengths."""
    cuts = np.sort(rng.choice(np.arange(1, n_items), n_parts - 1, replace=False))
    return np.diff(np.concatenate([[0], cuts, [n_items]]))


def span_noise_mask(length: int, cfg: SpanConfig, rng: np.random.Generator) -> np.ndarray:
    """(length,) bool, True = dropped. Like T5, spans alternate kept/noise, starting with kept."""
    n_noise, n_spans = cfg.counts(length)
    noise, kept = _partition(n_noise, n_spans, rng), _partition(length - n_noise, n_spans, rng)
    lengths = np.stack([kept, noise], axis=1).flatten()  # kept_0, noise_0, kept_1, noise_1, ...
    return np.repeat(np.tile([False, True], n_spans), lengths)


def corrupt_spans(tokens: np.ndarray, noise: np.ndarray, sentinel0: int, eos_id: int):
    """(inputs, targets) for one row, each ending with EOS; sentinel k = sentinel0 + k."""
    starts = noise & ~np.concatenate([[False], noise[:-1]])  # first token of each noise span
    sentinels = sentinel0 + np.cumsum(starts) - 1  # (L,) the sentinel of the span a token is in
    inputs = np.where(starts, sentinels, tokens)[~noise | starts]
    # Targets: every noise token, with one extra slot before each span's first token for its sentinel.
    slot = np.cumsum(noise.astype(np.int64) + starts) - 1
    targets = np.empty(int(noise.sum() + starts.sum()), dtype=tokens.dtype)
    targets[slot[noise]] = tokens[noise]
    targets[slot[starts] - 1] = sentinels[starts]
    return np.append(inputs, eos_id), np.append(targets, eos_id)


def fill_spans(inputs: np.ndarray, targets: np.ndarray, sentinel0: int) -> np.ndarray:
    """The inverse: put every span of `targets` back in place of its sentinel in `inputs`."""
    inputs, targets = inputs[:-1], targets[:-1]  # drop the final EOS (packed rows may hold others)
    is_sent = targets >= sentinel0
    spans = {int(targets[i]): seg[1:] for i, seg in zip(np.flatnonzero(is_sent),
                                                         np.split(targets, np.flatnonzero(is_sent)[1:]))}
    return np.concatenate([spans[int(t)] if t >= sentinel0 else [t] for t in inputs]).astype(inputs.dtype)


class SpanCorruptionLoss(Loss):
    needs = (EncoderDecoder,)
    uses_every_parameter = True  # the whole encoder-decoder and its tied head

    def __init__(self, sentinel0: int, cfg: SpanConfig, eos_token: str = "[SEP]", start_token: str | None = "[PAD]"):
        super().__init__()
        self.cfg, self.sentinel0 = cfg, sentinel0
        self.eos_token, self.start_token = eos_token, start_token
        self.eos_id: int | None = None
        self.val_nll, self.val_acc = TokenNLL(), MeanMetric()

    def connect(self, tok: Tokenizer, runtime=None) -> None:
        self.eos_id = token_id(tok, self.eos_token, "objective.eos_token")
        # T5 starts decoding from its pad token; without one, EOS serves (it also ends every target).
        start = token_id(tok, self.start_token, "objective.start_token", required=False)
        self.start_id = self.eos_id if start is None else start

    def corrupt(self, input_ids: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
        """input_ids (B, L) -> encoder inputs (B, L - noise + spans + 1), decoder inputs and labels."""
        if self.eos_id is None:
            raise RuntimeError("the module has no tokenizer yet; call module.connect(tokenizer_json=...) first")
        L = input_ids.size(1)
        _, n_spans = self.cfg.counts(L)
        if n_spans > self.cfg.n_sentinels:
            raise ConfigError(f"{n_spans} spans per {L}-token row need objective.n_sentinels >= {n_spans}")
        rng, rows = np.random.default_rng(seed), input_ids.cpu().numpy()
        pairs = [corrupt_spans(row, span_noise_mask(L, self.cfg, rng), self.sentinel0, self.eos_id) for row in rows]
        inputs = torch.from_numpy(np.stack([p[0] for p in pairs])).to(input_ids.device)
        labels = torch.from_numpy(np.stack([p[1] for p in pairs])).to(input_ids.device)
        start = torch.full_like(labels[:, :1], self.start_id)
        return {"input_ids": inputs, "decoder_input_ids": torch.cat([start, labels[:, :-1]], 1), "labels": labels}

    def flops_per_token(self, net: EncoderDecoder, seq_len: int) -> float:
        """Per token of the uncorrupted block: the encoder runs on the corrupted input (the block less
        its noise, plus one sentinel per span and EOS), and so do the cross-attention key and value
        projections; the rest of the decoder and the LM head run on the targets (the noise, the
        sentinels and EOS: ~0.2 of the block), with causal self-attention over the targets and
        cross-attention to the input. 6N over the whole network for every block token would count
        the decoder ~4x too often."""
        n_noise, n_spans = self.cfg.counts(seq_len)
        t_in, t_out = seq_len - n_noise + n_spans + 1, n_noise + n_spans + 1
        n_enc = sum(p.numel() for p in net.encoder.parameters())
        n_memory = sum(p.numel() for b in net.decoder for m in (b.cross_attn.k, b.cross_attn.v) for p in m.parameters())
        n_dec = sum(p.numel() for m in (net.decoder, net.lm_head) for p in m.parameters()) - n_memory
        layers_enc, layers_dec, d = len(net.encoder), len(net.decoder), net.config.n_embd
        total = (6 * (n_enc + n_memory) * t_in + 12 * layers_enc * d * t_in * t_in
                 + 6 * n_dec * t_out + 12 * layers_dec * d * t_out * (t_out + t_in))
        return total / seq_len

    def _loss(self, network: EncoderDecoder, batch: dict, seed: int):
        c = self.corrupt(batch["input_ids"], seed)
        logits = network(c["input_ids"], c["decoder_input_ids"])  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), c["labels"].flatten())
        return loss, (logits.argmax(-1) == c["labels"]).float().mean(), c["labels"].numel()

    def forward(self, network, batch, seed):
        return {"loss": self._loss(network, batch, seed)[0]}

    def val_update(self, network, batch, seed):
        loss, acc, n = self._loss(network, batch, seed)
        self.val_nll.update(loss, n)
        self.val_acc.update(acc, weight=n)

    def val_compute(self):
        return {"loss": self.val_nll.compute(), "ppl": self.val_nll.perplexity(), "span_acc": self.val_acc.compute()}


class SpanCorruptionModule(PretrainModule):
    """`objective=span_corruption` on an EncoderDecoder (model=t5_tiny)."""

    def __init__(self, model: dict, noise_density: float = 0.15, mean_span_length: float = 3.0,
                 n_sentinels: int = 100, eos_token: str = "[SEP]", start_token: str | None = "[PAD]",
                 optimizer: dict | None = None, scheduler: dict | None = None, seed: int = 0,
                 sentinel0: int | None = None):
        # From the config, `model.vocab_size` is the tokenizer's and the sentinels go on top. The saved
        # hyperparameters describe the network as built (vocab_size with the sentinels) and name the
        # first sentinel, so a checkpoint's `model` alone rebuilds this network (fine-tuning reads
        # it) and load_from_checkpoint, which passes sentinel0 back, does not add the sentinels twice.
        if sentinel0 is None:
            sentinel0 = int(model.get("vocab_size") or 0)  # the tokenizer's ids end here
            if sentinel0 <= 0:
                raise ConfigError("model.vocab_size is unset; it comes from the tokenizer (build via train())")
            model = {**model, "vocab_size": sentinel0 + n_sentinels}
        elif model.get("vocab_size") != sentinel0 + n_sentinels:
            raise ConfigError(f"model.vocab_size={model.get('vocab_size')} must be sentinel0 + n_sentinels = "
                              f"{sentinel0} + {n_sentinels} when sentinel0 is given")
        super().__init__(model, optimizer, scheduler, seed)
        self.save_hyperparameters()  # the init arguments as they stand now: model with sentinels, sentinel0
        cfg = SpanConfig(noise_density, mean_span_length, n_sentinels)
        self.set_losses({"span_corruption": SpanCorruptionLoss(sentinel0, cfg, eos_token, start_token)})
