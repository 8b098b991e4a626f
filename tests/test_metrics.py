import torch
import torch.nn.functional as F
from torchmetrics.text import Perplexity

from lmpretrain.metrics import TokenNLL


def test_token_nll_matches_torchmetrics_perplexity():
    torch.manual_seed(0)
    ours, ref = TokenNLL(), Perplexity(ignore_index=-100)
    for batch in range(3):
        logits = torch.randn(4, 7, 11)
        labels = torch.randint(0, 11, (4, 7))
        labels[0, : batch + 1] = -100  # unequal token counts per batch: the mean must weight them
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        ours.update(loss, int((labels != -100).sum()))
        ref.update(logits, labels)
    torch.testing.assert_close(ours.perplexity(), ref.compute(), rtol=1e-5, atol=1e-5)
