"""The project's metric library (torchmetrics where it has the metric, small tested code otherwise).

- `classification_metrics(num_classes)`: accuracy, precision/recall/F1 macro and micro (torchmetrics)
- `correlation_metrics()`: Pearson and Spearman (torchmetrics)
- `EntityF1`: span-level NER precision/recall/F1 over BIO tags (own)
- `SquadMetrics`: SQuAD v1.1 exact match and token F1 (own)
- `TokenNLL`: token-weighted NLL and perplexity from the step's loss (own)
- `GenerationMetrics(names=[...])`: BLEU, sacreBLEU, chrF, TER, ROUGE-1/2/L/Lsum, METEOR, BERTScore
  behind one `update(predictions, references)` / `compute() -> dict[str, float]`; see generation.py
"""

from lmpretrain.metrics.bertscore import BERTScore
from lmpretrain.metrics.classification import classification_metrics, correlation_metrics
from lmpretrain.metrics.entities import EntityF1
from lmpretrain.metrics.generation import METRIC_NAMES, GenerationMetrics
from lmpretrain.metrics.meteor import Meteor
from lmpretrain.metrics.perplexity import TokenNLL
from lmpretrain.metrics.rouge import RougeLsum
from lmpretrain.metrics.squad import SquadMetrics

__all__ = [
    "METRIC_NAMES",
    "BERTScore",
    "EntityF1",
    "GenerationMetrics",
    "Meteor",
    "RougeLsum",
    "SquadMetrics",
    "TokenNLL",
    "classification_metrics",
    "correlation_metrics",
]
