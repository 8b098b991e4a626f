"""Multitask: tasks are drawn per step in proportion to their weights, share one network, and
each task's loss and metrics are logged under its own name."""

import math

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lmpretrain.objectives import MultitaskModule
from lmpretrain.objectives.pretrain import derive_seed
from lmpretrain.tokenizers import TokenizerConfig, build_char_tokenizer

TOK = build_char_tokenizer("abcdefghijklmnopqrstuvwxyz ", TokenizerConfig(
    special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], eos_token="[SEP]", unk_token="[UNK]"))
V = TOK.get_vocab_size()


def pair_batches(n, B=8, T=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(5, V, (B, T), generator=g)
        ids[:, 0], ids[:, T // 2], ids[:, -1] = 2, 3, 3
        seg = (torch.arange(T) > T // 2).long().expand(B, T)
        out.append({"input_ids": ids, "token_type_ids": seg, "attention_mask": torch.ones_like(ids),
                    "pair_label": torch.randint(0, 2, (B,), generator=g)})
    return out


def block_batches(n, B=8, T=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        chunk = torch.randint(5, V, (B, T + 1), generator=g)
        out.append({"input_ids": chunk[:, :-1], "labels": chunk[:, 1:]})
    return out


class Logged(L.Callback):
    def __init__(self):
        self.keys = set()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.keys |= set(trainer.callback_metrics)


def test_tasks_are_sampled_by_weight():
    module = MultitaskModule({"arch": "bert", "vocab_size": V, "n_layer": 1, "n_embd": 32, "n_head": 2},
                             {"mlm": {"type": "mlm", "weight": 0.7}, "sop": {"type": "sop", "weight": 0.3}})
    n = 4000
    picks = [module.pick_loss(derive_seed(0, 0, step, 0)) for step in range(n)]
    assert abs(picks.count("mlm") / n - 0.7) <= 3 * math.sqrt(0.7 * 0.3 / n)


@pytest.mark.parametrize("arch,tasks,batches,expect", [
    ("bert", {"mlm": {"type": "mlm", "weight": 0.5}, "sop": {"type": "sop", "weight": 0.5}}, pair_batches,
     ["train/mlm/loss", "train/sop/loss", "val/mlm/mlm_acc", "val/sop/sop_acc", "val/mlm/loss"]),
    ("gpt", {"clm": {"type": "causal_lm", "weight": 0.5},
             "simcse": {"type": "contrastive", "weight": 0.5, "pooling": "mean"}}, block_batches,
     ["train/clm/loss", "train/simcse/loss", "val/clm/ppl", "val/simcse/alignment", "val/simcse/uniformity"]),
])
def test_mixture_trains_shared_weights_and_logs_each_task(tmp_path, arch, tasks, batches, expect):
    torch.manual_seed(0)
    model = {"arch": arch, "vocab_size": V, "n_layer": 1, "n_embd": 32, "n_head": 2, "block_size": 32,
             "dropout": 0.1}
    module = MultitaskModule(model, tasks, optimizer={"name": "adamw", "lr": 3e-3})
    module.connect(tokenizer_json=TOK.to_str())
    before = {k: v.clone() for k, v in module.network.state_dict().items()}
    logged = Logged()
    trainer = L.Trainer(max_steps=12, val_check_interval=12, limit_val_batches=2, logger=False, callbacks=[logged],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, accelerator="cpu")
    trainer.fit(module, DataLoader(batches(12), batch_size=None), DataLoader(batches(2, seed=1), batch_size=None))
    metrics = set(trainer.callback_metrics) | logged.keys
    assert set(expect) <= metrics, sorted(metrics)
    assert "val/loss" in metrics and np.isfinite(float(trainer.callback_metrics["val/loss"]))
    # both tasks moved the one shared network (the embedding is used by both)
    assert not torch.equal(before["tok_emb.weight"], module.network.state_dict()["tok_emb.weight"])
