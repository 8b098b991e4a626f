"""Classification and regression metrics: torchmetrics, under the names the project reports.

`classification_metrics(num_classes)` is a MetricCollection for single-label classification
(binary = 2 classes); `update(logits_or_probs_or_labels, target)` as torchmetrics' Multiclass*:
  accuracy                                   fraction of examples right (micro)
  precision_macro / recall_macro / f1_macro  per-class values, unweighted mean over classes
  precision_micro / recall_micro / f1_micro  from the pooled counts; with one label per example
                                             all three equal accuracy (kept for reports that list them)
torchmetrics leaves a class that neither occurs in the targets nor is predicted out of the macro
mean (sklearn with `labels=range(n)` would count it as 0); `ignore_index` targets are skipped.

`correlation_metrics()`: {"pearson", "spearman"} for regression outputs (STS-B style), one float
per example in `update(preds, target)`; Spearman ranks ties by their average rank.
"""

from __future__ import annotations

from torchmetrics import MetricCollection, PearsonCorrCoef, SpearmanCorrCoef
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)


def classification_metrics(num_classes: int, ignore_index: int | None = None) -> MetricCollection:
    kw = {"num_classes": num_classes, "ignore_index": ignore_index}
    metrics = {"accuracy": MulticlassAccuracy(average="micro", **kw)}
    for average in ("macro", "micro"):
        metrics[f"precision_{average}"] = MulticlassPrecision(average=average, **kw)
        metrics[f"recall_{average}"] = MulticlassRecall(average=average, **kw)
        metrics[f"f1_{average}"] = MulticlassF1Score(average=average, **kw)
    return MetricCollection(metrics)


def correlation_metrics() -> MetricCollection:
    return MetricCollection({"pearson": PearsonCorrCoef(), "spearman": SpearmanCorrCoef()})
