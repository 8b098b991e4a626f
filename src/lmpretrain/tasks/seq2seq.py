"""Sequence-to-sequence generation (translation, summarization, dialogue) on the network's own LM head.

Training is teacher-forced cross-entropy on the target tokens: an EncoderDecoder reads
`network(input_ids, decoder_input_ids)`, a GPT reads `source SEP target EOS` as one sequence with
the loss on the target only (`data.seq2seq.Seq2SeqDataModule` builds both layouts). Validation and
test log the same loss, and decode with `models.generation.generate` (greedy by default) to score
the detokenized outputs against the reference texts with `metrics.GenerationMetrics`
(`val/sacrebleu`, `val/chrf`, `val/rougeL`, ...). Decoding is much slower than the loss, and
validation runs many times during training, so a validation decodes only its first
`max_eval_batches` batches (the loss reads every batch). The test runs once and decodes every batch
(`max_test_batches`, null = all): its score is the test split's, comparable with a baseline scored
on the same split. (Scoring the first 8 of 94 test batches made Debian summaries look under the
first-12-words floor: that floor is 0.287 on those 256 packages, sorted by name, and 0.269 on all.)
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torchmetrics import MeanMetric

from lmpretrain.errors import ConfigError
from lmpretrain.metrics.generation import GenerationMetrics
from lmpretrain.models.encdec import CopyHead, EncoderDecoder
from lmpretrain.models.generation import STRATEGIES, generate
from lmpretrain.models.gpt import GPT
from lmpretrain.tasks.base import FinetuneModule

DEFAULT_METRICS = ("bleu", "sacrebleu", "chrf", "rouge")


class Seq2SeqModule(FinetuneModule):
    """Batches (`Seq2SeqDataModule`): input_ids, attention_mask, labels and decoder_input_ids
    (encoder-decoder) or prompt_ids, prompt_mask (decoder); `targets` the reference texts.

    layout, eos_id, start_id, pad_id: from the data module (`module_arguments`).
    decoding: greedy | beam | sample; num_beams, length_penalty (beam), temperature, top_p (sample).
    no_repeat_ngram_size: n > 0 bans any n-gram from occurring twice in an output (0 = off).
    max_new_tokens: the longest generated target (capped at an encoder-decoder's block_size).
    max_eval_batches: validation batches that are decoded and scored (null = all).
    max_test_batches: test batches that are decoded and scored (null = all, the default).
    metrics: `GenerationMetrics` names (rouge -> rouge1, rouge2, rougeL, rougeLsum).
    copy_source: give an encoder-decoder a pointer-generator copy head (`models.encdec.CopyHead`,
        new parameters `network.copy_head.*` even when the rest is pretrained): each target token is
        written from the vocabulary or copied from the source, as summaries copy names and terms.
    """

    def __init__(self, model: dict, layout: str = "encoder_decoder", eos_id: int = 0, start_id: int | None = None,
                 pad_id: int = 0, decoding: str = "greedy", num_beams: int = 4, length_penalty: float = 1.0,
                 temperature: float = 1.0, top_p: float | None = None, max_new_tokens: int = 64,
                 max_eval_batches: int | None = 4, metrics: list[str] | None = None,
                 optimizer: dict | None = None, scheduler: dict | None = None, copy_source: bool = False,
                 no_repeat_ngram_size: int = 0, max_test_batches: int | None = None):
        if decoding not in STRATEGIES:
            raise ConfigError(f"task.decoding={decoding!r} must be one of {STRATEGIES}")
        if max_new_tokens < 1 or num_beams < 1 or any(n is not None and n < 0 for n in (max_eval_batches, max_test_batches)):
            raise ConfigError("task.max_new_tokens and task.num_beams must be >= 1, "
                              "task.max_eval_batches and task.max_test_batches >= 0 (or null: all)")
        if no_repeat_ngram_size < 0:
            raise ConfigError(f"task.no_repeat_ngram_size={no_repeat_ngram_size} must be >= 0 (0 = off)")
        super().__init__(model, num_outputs=None, optimizer=optimizer, scheduler=scheduler)
        expected = {EncoderDecoder: "encoder_decoder", GPT: "decoder"}.get(type(self.network))
        if expected is None:
            raise ConfigError(f"seq2seq generation needs a t5 (encoder-decoder) or gpt (decoder) model, not "
                              f"{type(self.network).__name__}")
        if layout != expected:
            raise ConfigError(f"data.layout={layout!r} does not fit a {type(self.network).__name__}; set "
                              f"data.layout={expected}")
        if copy_source:
            if not isinstance(self.network, EncoderDecoder):
                raise ConfigError("task.copy_source=true needs an encoder-decoder (model=t5_tiny); set "
                                  "task.copy_source=false for a decoder")
            self.network.copy_head = CopyHead(self.network.config)
        self.layout, self.eos_id, self.pad_id = layout, eos_id, pad_id
        self.start_id = eos_id if start_id is None else start_id
        self.decoding, self.num_beams, self.length_penalty = decoding, num_beams, length_penalty
        self.temperature, self.top_p = temperature, top_p
        self.no_repeat_ngram_size = no_repeat_ngram_size
        self.max_new_tokens = max_new_tokens
        if isinstance(self.network, EncoderDecoder):
            self.max_new_tokens = min(max_new_tokens, self.network.config.block_size)
        self.max_eval_batches = max_eval_batches
        self.max_test_batches = max_test_batches
        self.save_hyperparameters()
        names = list(metrics or DEFAULT_METRICS)
        self.metrics = torch.nn.ModuleDict({
            split: torch.nn.ModuleDict({"loss": MeanMetric(), "generation": GenerationMetrics(names)})
            for split in ("val", "test")
        })
        self._tokenizer = None
        self._eval_batches = 0

    # -- loss ------------------------------------------------------------------------------------
    def loss(self, batch: dict) -> tuple[torch.Tensor, int]:
        """Mean cross-entropy over the target tokens, and their number."""
        if self.layout == "encoder_decoder":
            logits = self.network(batch["input_ids"], batch["decoder_input_ids"], batch.get("attention_mask"))
            labels = batch["labels"]
        else:
            logits = self.network(batch["input_ids"])[:, :-1]
            labels = batch["labels"][:, 1:]
        n = int((labels != -100).sum())
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100), n

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.log_train_loss(self.loss(batch)[0])

    def flops_per_batch(self, batch: dict) -> float:
        """Training FLOPs (forward + backward) of `loss(batch)`, by what runs on which length: an
        encoder-decoder runs the encoder (and the cross-attention K/V projections, and the copy
        head's keys) on the S source positions, the rest of the decoder, the LM head and the copy
        head's queries on the T target positions, with attention terms S*S, T*T and T*S. A decoder
        runs GPT on source + target with its LM head on every position. Padding counts: it runs."""
        net, c = self.network, self.network.config
        b, s = batch["input_ids"].shape
        on_source, on_target = self._weights_by_length
        if self.layout == "decoder":
            return b * (6 * on_source * s + 12 * c.n_layer * c.n_embd * s * s)
        t, d = batch["decoder_input_ids"].shape[1], c.n_embd
        attention = 12 * d * (len(net.encoder) * s * s + len(net.decoder) * t * (t + s))
        copies = getattr(net, "copy_head", None) is not None
        copy_scores = 6 * d * t * s if copies else 0  # its query-key scores only: no value matmul
        return b * (6 * on_source * s + 6 * on_target * t + attention + copy_scores)

    @functools.cached_property
    def _weights_by_length(self) -> tuple[int, int]:
        """(weights that run on every source position, on every target position), counted once
        (~1 ms a step otherwise); a decoder runs all of them on source + target: (all, 0)."""
        net = self.network
        if self.layout == "decoder":
            return net.num_params(), 0

        def count(*modules) -> int:
            return sum(p.numel() for m in modules for p in m.parameters())

        memory = count(*(m for blk in net.decoder for m in (blk.cross_attn.k, blk.cross_attn.v)))
        copy = getattr(net, "copy_head", None)
        on_source = count(*net.encoder) + memory + (count(copy.key) if copy is not None else 0)
        on_target = count(*net.decoder, net.lm_head) - memory + (count(copy.query, copy.gate) if copy is not None else 0)
        return on_source, on_target

    # -- generation ------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            if not self.tokenizer_json:
                raise ConfigError("the module has no tokenizer (connect(tokenizer_json=...) first)")
            self._tokenizer = Tokenizer.from_str(self.tokenizer_json)
        return self._tokenizer

    @torch.no_grad()
    def generate_ids(self, batch: dict) -> list[list[int]]:
        """The generated target ids of each example, cut before EOS."""
        if self.layout == "encoder_decoder":
            ids, mask = batch["input_ids"], batch.get("attention_mask")
        else:
            ids, mask = batch["prompt_ids"], batch["prompt_mask"]
        out = generate(self.network, ids, mask, max_new_tokens=self.max_new_tokens, strategy=self.decoding,
                       num_beams=self.num_beams, length_penalty=self.length_penalty, temperature=self.temperature,
                       top_p=self.top_p, eos_id=self.eos_id, pad_id=self.pad_id, decoder_start_id=self.start_id,
                       no_repeat_ngram_size=self.no_repeat_ngram_size)
        rows = []
        for row in out.tolist():
            rows.append(row[: row.index(self.eos_id)] if self.eos_id in row else row)
        return rows

    def generate_texts(self, batch: dict) -> list[str]:
        """Greedy (or the configured decoding) output of each example as detokenized text."""
        return [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in self.generate_ids(batch)]

    # -- evaluation ------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._eval_batches = 0

    def on_test_epoch_start(self) -> None:
        self._eval_batches = 0

    def _eval_step(self, split: str, batch: dict) -> None:
        m = self.metrics[split]
        loss, n = self.loss(batch)
        m["loss"].update(loss, weight=max(n, 1))
        limit = self.max_eval_batches if split == "val" else self.max_test_batches
        if limit is None or self._eval_batches < limit:
            self._eval_batches += 1
            m["generation"].update(self.generate_texts(batch), batch["targets"])

    def _eval_end(self, split: str) -> None:
        m = self.metrics[split]
        self.log(f"{split}/loss", m["loss"].compute())
        if self._eval_batches:
            for name, value in m["generation"].compute().items():
                self.log(f"{split}/{name}", value, prog_bar=name == "sacrebleu")
        for metric in m.values():
            metric.reset()
