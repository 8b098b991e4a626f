"""`flops_per_token` (the model FLOPs behind train/mfu) against torch's own count of the matmuls one
training step runs, forward and backward (torch.utils.flop_counter): an objective whose head or
decoder runs on part of the tokens must not count it for all of them. An over-count is not only a
wrong MFU: a rate above the cached CPU peak raises that peak for every later run."""

import pytest
import torch
from tokenizers import Tokenizer
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from conftest import SHAKESPEARE
from lmpretrain.module import LMModule
from lmpretrain.objectives import CausalLMModule
from lmpretrain.objectives.contrastive import ContrastiveModule
from lmpretrain.objectives.electra import ElectraModule
from lmpretrain.objectives.masked_lm import MaskedLMModule
from lmpretrain.objectives.span_corruption import SpanCorruptionModule
from lmpretrain.tokenizers import TokenizerConfig, train_tokenizer

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# BERT-Tiny / T5-tiny-like widths with a 2k vocabulary: the head is a large share of the weights,
# as it is for BERT-Tiny with its 8k-16k WordPiece.
SHAPE = {"block_size": 128, "n_layer": 2, "n_head": 2, "n_embd": 128, "dropout": 0.0}


@pytest.fixture(scope="module")
def wordpiece() -> Tokenizer:
    cfg = TokenizerConfig(kind="wordpiece", vocab_size=2000, special_tokens=SPECIALS, eos_token="[SEP]",
                          unk_token="[UNK]", lowercase=True)
    return train_tokenizer(cfg, iter(SHAKESPEARE.read_text().splitlines()[:8000]))


def matmul_flops(loss_of_one_step) -> int:
    """Matmul FLOPs of one forward (`loss_of_one_step()`) + backward. Attention through the math
    kernel, whose matmuls the counter sees (it has no formula for the fused CPU kernel); both it and
    the PaLM term count the full score matrix, the causal half included."""
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        loss_of_one_step().backward()
    return counter.get_total_flops()


def counted_flops(module, batch: dict) -> int:
    """One training step of a single-loss pretraining module."""
    (loss,) = module.losses.values()
    return matmul_flops(lambda: loss(module.network, batch, 0)["loss"])


def text_batch(tok: Tokenizer, rows: int = 16, length: int = 128) -> dict:
    ids = tok.encode(" ".join(SHAKESPEARE.read_text().split()[:6000]), add_special_tokens=False).ids
    block = torch.tensor(ids[: rows * length]).view(rows, length)
    return {"input_ids": block, "attention_mask": torch.ones_like(block)}


def test_causal_lm_count_matches_the_matmuls_run():
    torch.manual_seed(0)
    m = CausalLMModule({"arch": "gpt", "vocab_size": 67, **SHAPE})
    ids = torch.randint(0, 67, (8, 129))
    batch = {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}
    expected = m.flops_per_token(128) * batch["input_ids"].numel()
    assert counted_flops(m, batch) == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize("cls, arch, dropout", [
    (MaskedLMModule, "bert", 0.0),         # its head on the masked share only
    (ElectraModule, "bert", 0.0),          # both stacks on every token, the generator's head on the masked share
    (SpanCorruptionModule, "t5", 0.0),     # its decoder and LM head on the span targets only
    (ContrastiveModule, "bert", 0.1),      # two passes of the blocks (dropout views), no head
    (ContrastiveModule, "t5", 0.1),        # the same through a T5's encoder
])
def test_objective_counts_the_matmuls_it_runs(wordpiece, cls, arch, dropout):
    torch.manual_seed(0)
    m = cls({"arch": arch, "vocab_size": wordpiece.get_vocab_size(), **SHAPE, "dropout": dropout})
    m.connect(tokenizer_json=wordpiece.to_str())
    batch = text_batch(wordpiece)
    tokens = batch["input_ids"].numel()
    counted = counted_flops(m, batch)
    assert counted == pytest.approx(m.flops_per_token(128) * tokens, rel=0.05)
    if cls is not ContrastiveModule:  # 6N + attention on every token (LMModule's count) was far off
        assert LMModule.flops_per_token(m, 128) * tokens > 1.3 * counted


@pytest.mark.parametrize("arch, copy_source", [("t5", True), ("t5", False), ("gpt", False)])
def test_seq2seq_counts_source_and_target_lengths_apart(arch, copy_source):
    """Fine-tuning a seq2seq task: the encoder on 100 source tokens, the decoder and LM head (and the
    copy head's queries) on 24 target tokens; a decoder-only GPT on source + target."""
    from lmpretrain.tasks import Seq2SeqModule

    torch.manual_seed(0)
    layout = "decoder" if arch == "gpt" else "encoder_decoder"
    m = Seq2SeqModule({"arch": arch, "vocab_size": 500, **SHAPE}, layout=layout, copy_source=copy_source)
    g = torch.Generator().manual_seed(0)
    if layout == "decoder":
        ids = torch.randint(1, 500, (4, 124), generator=g)
        batch = {"input_ids": ids, "labels": ids}
    else:
        target = torch.randint(1, 500, (4, 24), generator=g)
        batch = {"input_ids": torch.randint(1, 500, (4, 100), generator=g), "attention_mask": torch.ones(4, 100),
                 "decoder_input_ids": target, "labels": target}
    assert matmul_flops(lambda: m.loss(batch)[0]) == pytest.approx(m.flops_per_batch(batch), rel=0.05)


def test_multitask_counts_each_loss_and_weights_them_as_they_are_drawn(wordpiece):
    """objective=multitask draws one loss a step with probability ~ its weight: the count is each
    loss's own count (checked against the matmuls it runs), weighted so."""
    from lmpretrain.objectives.multitask import MultitaskModule

    torch.manual_seed(0)
    m = MultitaskModule({"arch": "bert", "vocab_size": wordpiece.get_vocab_size(), **SHAPE, "dropout": 0.1},
                        losses={"mlm": {"type": "mlm", "weight": 3.0}, "simcse": {"type": "contrastive", "weight": 1.0}})
    m.connect(tokenizer_json=wordpiece.to_str())
    batch = text_batch(wordpiece)
    tokens = batch["input_ids"].numel()
    per_loss = {}
    for name, loss in m.losses.items():
        per_loss[name] = matmul_flops(lambda loss=loss: loss(m.network, batch, 0)["loss"])
        assert per_loss[name] == pytest.approx(loss.flops_per_token(m.network, 128) * tokens, rel=0.05)
    expected = (3 * per_loss["mlm"] + per_loss["simcse"]) / 4
    assert m.flops_per_token(128) * tokens == pytest.approx(expected, rel=0.05)
