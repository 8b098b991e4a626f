"""Every trainable weight of every objective is handed to the optimizer (a head outside it would
silently stay at its initial values, as the NSP/SOP classifier once did)."""

import pytest

from conftest import make_cfg
from lmpretrain.train import build


@pytest.mark.parametrize("experiment", ["bert_mlm_sop_tiny", "bert_mlm_tiny", "electra_tiny", "t5_span_tiny", "simcse_tiny",
                                        "shakespeare_char"])
def test_optimizer_holds_every_trainable_parameter(tmp_path, experiment):
    _, module, _ = build(make_cfg(tmp_path, [f"experiment={experiment}", "debug=fast"]))
    optimizer = module.configure_optimizers()["optimizer"]
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    trainable = {id(p): n for n, p in module.named_parameters() if p.requires_grad}
    assert set(trainable) == in_optimizer, [n for i, n in trainable.items() if i not in in_optimizer]
    if experiment == "bert_mlm_sop_tiny":
        assert id(module.network.pair_head.weight) in in_optimizer
