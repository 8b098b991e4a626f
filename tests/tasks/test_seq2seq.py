"""Seq2seq generation: both encodings, the dialogue split by prompt, fine-tuning end to end (T5 on
translation, GPT on dialogue) and a memorized pair decoded back exactly (encode -> train ->
generate -> detokenize -> sacreBLEU 1.0)."""

import math
from unittest import mock

import pytest
import torch

from conftest import DATA, make_cfg
from lmpretrain.data import Seq2SeqDataModule
from lmpretrain.data.readers import read_records
from lmpretrain.finetune import finetune
from lmpretrain.metrics import GenerationMetrics
from lmpretrain.tasks import Seq2SeqModule

WORDPIECE = {"kind": "wordpiece", "vocab_size": 2000, "special_tokens": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
             "eos_token": "[SEP]", "unk_token": "[UNK]", "lowercase": False}
DIALOGUE = "dialogue_chatterbot.jsonl"
FILES = {"train": DIALOGUE, "val": DIALOGUE, "test": DIALOGUE}
FAST = ["debug=fast", "trainer.accelerator=cpu", "tokenizer.vocab_size=2000", "tokenizer.lowercase=false",
        "data.batch_size=8", "task.max_eval_batches=1", "task.max_new_tokens=12", "+trainer.limit_test_batches=1"]


def dialogue_module(layout: str, block_size: int = 32, **kw) -> Seq2SeqDataModule:
    dm = Seq2SeqDataModule(files=FILES, source_field="prompt", target_field="response", split_by="prompt",
                           layout=layout, tokenizer=WORDPIECE, block_size=block_size, **kw)
    dm.prepare_data()
    return dm


def test_encoder_decoder_layout_shifts_the_target_into_the_decoder_input():
    dm = dialogue_module("t5", max_target_tokens=8)
    assert dm.layout == "encoder_decoder" and dm.eos_id == dm.tokenizer.token_to_id("[SEP]")
    assert dm.start_id == dm.tokenizer.token_to_id("[PAD]")
    record = {"prompt": "What is AI? " * 20, "response": "Artificial Intelligence is the branch of engineering."}
    e = dm.encode(record)
    source = dm.tokenizer.encode(record["prompt"], add_special_tokens=False).ids
    target = dm.tokenizer.encode(record["response"], add_special_tokens=False).ids
    assert e["input_ids"] == source[:31] + [dm.eos_id]  # cut to block_size with EOS
    assert e["labels"] == target[:8] + [dm.eos_id]
    assert e["decoder_input_ids"] == [dm.start_id] + e["labels"][:-1]
    batch = dm.collate_fn([e, dm.encode({"prompt": "Hi", "response": "Hello"})])
    assert batch["targets"] == [record["response"], "Hello"]
    assert batch["labels"][1].tolist() == dm.encode({"prompt": "Hi", "response": "Hello"})["labels"] + [-100] * 7
    assert batch["attention_mask"][1].sum() == 2 and batch["decoder_input_ids"].shape == batch["labels"].shape


def test_decoder_layout_puts_the_loss_on_the_target_only():
    dm = dialogue_module("decoder", max_target_tokens=48)
    record = {"prompt": "Are you sentient?", "response": "Sort of."}
    e = dm.encode(record)
    source = dm.tokenizer.encode(record["prompt"], add_special_tokens=False).ids
    target = dm.tokenizer.encode(record["response"], add_special_tokens=False).ids
    n = len(source) + 1
    assert e["prompt_ids"] == source + [dm.eos_id]  # [SEP] is the separator and the EOS of wordpiece
    assert e["input_ids"] == source + [dm.eos_id] + target + [dm.eos_id]
    assert e["labels"] == [-100] * n + target + [dm.eos_id]
    long = dm.encode({"prompt": "word " * 100, "response": "reply " * 100})
    assert len(long["input_ids"]) == 32 and long["labels"][-1] == dm.eos_id  # the source is cut first
    assert sum(x != -100 for x in long["labels"]) == 32 - 3 + 1
    batch = dm.collate_fn([e, long])
    assert batch["prompt_ids"].shape[0] == 2 and batch["prompt_mask"][0].sum() == n
    assert batch["labels"][0, len(e["labels"]):].eq(-100).all()


def test_dialogue_split_by_prompt_is_disjoint_and_complete():
    dm = dialogue_module("t5")
    prompts = {part: [r["prompt"] for r in dm.split_records(part)] for part in ("train", "val", "test")}
    sets = {p: set(v) for p, v in prompts.items()}
    assert not sets["train"] & sets["val"] and not sets["train"] & sets["test"] and not sets["val"] & sets["test"]
    assert sum(map(len, prompts.values())) == len(list(read_records(DATA / DIALOGUE))) == 1243
    assert 0.05 < len(prompts["val"]) / 1243 < 0.15 and 0.05 < len(prompts["test"]) / 1243 < 0.15


def check_generation_metrics(metrics: dict, split: str = "val") -> None:
    for name in ("bleu", "sacrebleu", "chrf", "rouge1", "rougeL"):
        key = f"{split}/{name}"
        assert key in metrics, sorted(metrics)
        assert 0.0 <= metrics[key] <= 1.0, (key, metrics[key])
    assert math.isfinite(metrics[f"{split}/loss"])


def test_translation_from_scratch_with_t5_logs_generation_metrics(tmp_path):
    metrics = finetune(make_cfg(tmp_path, ["task=translation_en_es", "model=t5_tiny", *FAST], config_name="finetune"))
    check_generation_metrics(metrics)
    check_generation_metrics(metrics, "test")
    module = Seq2SeqModule.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert module.layout == "encoder_decoder" and module.tokenizer_json and not hasattr(module.network, "task_head")


def test_dialogue_from_scratch_with_gpt_logs_generation_metrics(tmp_path):
    metrics = finetune(make_cfg(tmp_path, ["task=dialogue_chatterbot", "model=gpt_tiny", *FAST], config_name="finetune"))
    check_generation_metrics(metrics)


@pytest.mark.slow
def test_a_decoder_checkpoint_sets_the_layout_of_a_preset_that_defaults_to_t5(tmp_path):
    """translation_en_es defaults to model=t5_tiny (data.layout: ${model.arch}); with pretrained= a
    GPT checkpoint the layout must follow the checkpoint, not the model group."""
    from lmpretrain.train import train

    train(make_cfg(tmp_path / "pre", ["data=debian", "tokenizer=wordpiece", "tokenizer.lowercase=false",
                                      "model=gpt_tiny", "debug=fast", "trainer.accelerator=cpu"]))
    ckpt = tmp_path / "pre" / "checkpoints" / "last.ckpt"
    fast = [o for o in FAST if not o.startswith("tokenizer.")]
    metrics = finetune(make_cfg(tmp_path / "ft", ["task=dialogue_chatterbot", f"pretrained={ckpt}", *fast],
                                config_name="finetune"))
    check_generation_metrics(metrics)
    module = Seq2SeqModule.load_from_checkpoint(tmp_path / "ft" / "checkpoints" / "last.ckpt")
    assert module.layout == "decoder" and module.hparams.model["arch"] == "gpt"


def memorize(dm: Seq2SeqDataModule, model: dict, records: list[dict], steps: int) -> tuple[list[str], dict]:
    """Train a tiny module on one batch `steps` times; its greedy outputs and their metrics."""
    torch.manual_seed(0)
    module = Seq2SeqModule(model={**model, "vocab_size": dm.vocab_size}, max_new_tokens=16,
                           **dm.module_arguments())
    module.connect(tokenizer_json=dm.tokenizer.to_str())
    batch = dm.collate_fn([dm.encode(r) for r in records])
    opt = torch.optim.AdamW(module.parameters(), lr=3e-3)
    module.train()
    for _ in range(steps):
        loss, _ = module.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    texts = module.generate_texts(batch)
    metrics = GenerationMetrics(["sacrebleu", "chrf"])
    metrics.update(texts, batch["targets"])
    return texts, metrics.compute()


PAIRS = [{"prompt": "Are you sentient?", "response": "Sort of."},
         {"prompt": "What is AI?", "response": "AI is the field of science that builds thinking machines."}]


def test_memorized_pairs_are_generated_exactly_by_t5_and_gpt():
    tiny = {"block_size": 32, "n_layer": 1, "n_head": 2, "n_embd": 128, "dropout": 0.0}
    # With GPT's N(0, 0.02) embedding instead of T5's N(0, 1) this took T5 400 steps (not 100).
    for layout, arch, steps in (("encoder_decoder", "t5", 100), ("decoder", "gpt", 150)):
        dm = dialogue_module(layout)
        for r in PAIRS:  # the tokenizer round-trips the targets, so an exact copy is reachable
            assert dm.tokenizer.decode(dm.tokenizer.encode(r["response"], add_special_tokens=False).ids) == r["response"]
        texts, metrics = memorize(dm, {"arch": arch, **tiny}, PAIRS, steps=steps)
        assert texts == [r["response"] for r in PAIRS], (layout, texts)
        assert metrics["sacrebleu"] == 1.0 and metrics["chrf"] == 1.0, (layout, metrics)


def test_validation_decodes_its_first_batches_and_the_test_every_batch():
    """A validation (run many times while training) decodes `max_eval_batches`; the test decodes every
    batch by default, so its score is the whole split's, as the baselines are (README: the summary's
    first 8 test batches have a floor of 0.287, the whole split 0.269), or `max_test_batches`."""
    dm = dialogue_module("encoder_decoder")
    model = {"arch": "t5", "block_size": 32, "n_layer": 1, "n_head": 2, "n_embd": 32, "vocab_size": dm.vocab_size}
    batch = dm.collate_fn([dm.encode(r) for r in PAIRS])
    for max_test_batches, decoded_test in ((None, 5), (3, 3)):
        module = Seq2SeqModule(model=model, max_eval_batches=2, max_test_batches=max_test_batches,
                               **dm.module_arguments())
        module.connect(tokenizer_json=dm.tokenizer.to_str())
        module.eval()
        decoded = {}
        for split in ("val", "test"):
            module.generate_texts = mock.Mock(wraps=module.generate_texts)  # counts the decoded batches
            getattr(module, f"on_{'validation' if split == 'val' else split}_epoch_start")()
            for _ in range(5):  # 5 batches, each also in the loss
                module._eval_step(split, batch)
            decoded[split] = module.generate_texts.call_count
            assert module.metrics[split]["loss"].weight > 0
        assert decoded == {"val": 2, "test": decoded_test}


def test_copy_source_adds_a_pointer_head_that_a_pretrained_network_may_lack():
    from lmpretrain.errors import ConfigError
    from lmpretrain.models import EncoderDecoder
    from lmpretrain.models.encdec import CopyHead

    dm = dialogue_module("encoder_decoder")
    model = {"arch": "t5", "block_size": 32, "n_layer": 1, "n_head": 2, "n_embd": 32, "vocab_size": dm.vocab_size}
    module = Seq2SeqModule(model=model, copy_source=True, **dm.module_arguments())
    assert isinstance(module.network.copy_head, CopyHead)
    pretrained = Seq2SeqModule(model=model, **dm.module_arguments()).network.state_dict()  # no copy head
    assert not any(k.startswith("copy_head.") for k in pretrained)
    module.load_pretrained_network(pretrained)
    batch = dm.collate_fn([dm.encode(r) for r in PAIRS])
    logp = module.network(batch["input_ids"], batch["decoder_input_ids"], batch["attention_mask"])
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(logp.shape[:2]))  # a distribution, not logits
    loss, n = module.loss(batch)
    assert math.isfinite(loss.item()) and n == int((batch["labels"] != -100).sum())
    assert all(len(ids) <= module.max_new_tokens for ids in module.generate_ids(batch))
    assert EncoderDecoder(module.network.config).copy_head is None  # not part of the model config
    with pytest.raises(ConfigError, match="copy_source"):
        Seq2SeqModule(model={**model, "arch": "gpt"}, copy_source=True, layout="decoder")


@pytest.mark.slow  # ~150 s on 2 cores
def test_summaries_from_scratch_use_their_source_after_300_steps(tmp_path):
    """debian_summary from scratch (T5-tiny, copy head, beam 4), 300 steps: ROUGE-L on the first 4
    test batches (128 packages) must clear a summary that ignores its source. That floor is a real,
    fluent Debian summary of another package (the training split's i-th for the test's i-th): 0.036
    over the whole test split. Measured: 0.160 at 300 steps (0.287 on the whole split after the
    bench's 2,000 steps); the first 12 words of the description score 0.269 there (README)."""
    refs = [r["summary"] for r in read_records(DATA / "debian_packages.test.jsonl.gz")]
    others = [r["summary"] for r, _ in zip(read_records(DATA / "debian_packages.train.jsonl.gz"), refs)]
    unrelated = GenerationMetrics(["rouge"])
    unrelated.update(others, [[r] for r in refs])
    floor = float(unrelated.compute()["rougeL"])
    assert 0.0 < floor < 0.06
    metrics = finetune(make_cfg(tmp_path, ["task=debian_summary", "trainer.accelerator=cpu", "logger=csv",
                                           "optimizer.lr=1e-3", "trainer.max_steps=300", "trainer.val_check_interval=300",
                                           "task.max_eval_batches=2", "+trainer.limit_test_batches=4"],
                                config_name="finetune"))
    print(f"\ndebian_summary, 300 steps from scratch: test ROUGE-L {metrics['test/rougeL']:.3f} "
          f"(unrelated summary {floor:.3f})")
    assert metrics["test/rougeL"] > floor + 0.06
