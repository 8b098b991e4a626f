import numpy as np
import pytest
import torch

from lmpretrain.metrics import classification_metrics, correlation_metrics


def test_classification_metrics_hand_computed():
    # class 0: tp 1 fp 1 fn 1 -> P 1/2 R 1/2 F 1/2; class 1: tp 2 fp 1 fn 0 -> P 2/3 R 1 F 4/5;
    # class 2: tp 1 fp 0 fn 1 -> P 1 R 1/2 F 2/3; class 3 never occurs nor is predicted: left out
    target = torch.tensor([0, 0, 1, 1, 2, 2, 1])
    preds = torch.tensor([0, 1, 1, 1, 2, 0, 3])
    target[-1] = -100  # ignored, whatever the prediction
    metrics = classification_metrics(num_classes=4, ignore_index=-100)
    metrics.update(preds[:3], target[:3])
    metrics.update(torch.nn.functional.one_hot(preds[3:], 4).float(), target[3:])  # scores work too
    out = {k: v.item() for k, v in metrics.compute().items()}
    expected = {
        "accuracy": 4 / 6,
        "precision_macro": (1 / 2 + 2 / 3 + 1) / 3,
        "recall_macro": (1 / 2 + 1 + 1 / 2) / 3,
        "f1_macro": (1 / 2 + 4 / 5 + 2 / 3) / 3,
        "precision_micro": 4 / 6,
        "recall_micro": 4 / 6,
        "f1_micro": 4 / 6,
    }
    assert out == pytest.approx(expected)


def test_correlation_metrics():
    preds = torch.tensor([1.0, 2.0, 2.0, 3.0, 5.0, 0.5])
    target = torch.tensor([2.0, 1.0, 4.0, 4.0, 6.0, 0.0])
    metrics = correlation_metrics()
    metrics.update(preds[:4], target[:4])
    metrics.update(preds[4:], target[4:])
    out = metrics.compute()
    assert out["pearson"].item() == pytest.approx(np.corrcoef(preds.numpy(), target.numpy())[0, 1], abs=1e-5)
    # Spearman = Pearson of the ranks, ties sharing their average rank
    pred_ranks, target_ranks = [2, 3.5, 3.5, 5, 6, 1], [3, 2, 4.5, 4.5, 6, 1]
    assert out["spearman"].item() == pytest.approx(np.corrcoef(pred_ranks, target_ranks)[0, 1], abs=1e-5)
