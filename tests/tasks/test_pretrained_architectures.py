"""Fine-tuning from pretraining checkpoints of the architectures whose network differs from the
model config: T5 span corruption builds its network with sentinel rows past the tokenizer's
vocabulary, and the checkpoint must say so for fine-tuning to rebuild the same network."""

import math

import pytest
import torch
from tokenizers import Tokenizer

from conftest import make_cfg
from lmpretrain.finetune import build, finetune
from lmpretrain.objectives import SpanCorruptionModule
from lmpretrain.tasks import SequenceClassificationModule
from lmpretrain.train import train

FAST = ["debug=fast", "trainer.accelerator=cpu"]
HEAD = {"task_head.1.weight", "task_head.1.bias"}


@pytest.fixture(scope="module")
def t5_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("t5_pretrain")
    train(make_cfg(out, ["experiment=t5_span_tiny", *FAST, "data.batch_size=4"]))
    return out / "checkpoints" / "last.ckpt"


def network_state(ckpt: dict) -> dict:
    return {k[len("network."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("network.")}


def test_span_corruption_checkpoint_describes_the_network_it_holds(t5_checkpoint):
    ckpt = torch.load(t5_checkpoint, map_location="cpu", weights_only=False)
    hp, state = ckpt["hyper_parameters"], network_state(ckpt)
    n_tokens = Tokenizer.from_str(ckpt["tokenizer_json"]).get_vocab_size()
    assert hp["n_sentinels"] == 100 and hp["sentinel0"] == n_tokens  # sentinels start past the tokenizer's ids
    assert hp["model"]["vocab_size"] == n_tokens + 100 == state["tok_emb.weight"].shape[0]
    # load_from_checkpoint takes the saved model as built: no second set of sentinels
    reloaded = SpanCorruptionModule.load_from_checkpoint(t5_checkpoint, map_location="cpu", weights_only=False)
    assert reloaded.network.tok_emb.num_embeddings == n_tokens + 100
    assert next(iter(reloaded.losses.values())).sentinel0 == n_tokens
    for name, value in state.items():
        assert torch.equal(reloaded.network.state_dict()[name], value), name


def test_span_corruption_module_refuses_a_vocab_that_does_not_hold_its_sentinels():
    from lmpretrain.errors import ConfigError

    model = {"arch": "t5", "vocab_size": 60, "block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16}
    assert SpanCorruptionModule(model, n_sentinels=10).hparams["model"]["vocab_size"] == 70
    assert SpanCorruptionModule({**model, "vocab_size": 70}, n_sentinels=10, sentinel0=60).network.config.vocab_size == 70
    with pytest.raises(ConfigError, match="sentinel0"):
        SpanCorruptionModule(model, n_sentinels=10, sentinel0=60)


def test_t5_span_checkpoint_fine_tunes_with_its_encoder_carried_over(t5_checkpoint, tmp_path):
    ckpt = torch.load(t5_checkpoint, map_location="cpu", weights_only=False)
    state = network_state(ckpt)
    cfg = make_cfg(tmp_path, ["task=spam", f"pretrained={t5_checkpoint}", *FAST], config_name="finetune")
    datamodule, module, _ = build(cfg)
    ours = module.network.state_dict()
    assert set(ours) - set(state) == HEAD and set(state) <= set(ours)
    encoder = [k for k in state if k.startswith(("encoder.", "enc_norm.", "tok_emb."))]
    assert len(encoder) > 10
    for name, value in state.items():
        assert torch.equal(ours[name], value), name
    assert module.network.config.vocab_size == ckpt["hyper_parameters"]["model"]["vocab_size"]
    assert module.tokenizer_json == ckpt["tokenizer_json"] == datamodule.tokenizer.to_str()
    assert module.pooling == "mean"  # an encoder-decoder classifies from its encoder's mean state

    # the same encoder states as the pretrained network on a real spam batch
    pretrained = SpanCorruptionModule.load_from_checkpoint(t5_checkpoint, map_location="cpu", weights_only=False)
    datamodule.setup("fit")
    batch = next(iter(datamodule.val_dataloader()))
    module.network.eval(), pretrained.network.eval()
    with torch.no_grad():
        ids, mask = batch["input_ids"][:4], batch["attention_mask"][:4]
        assert torch.equal(module.network.features(ids, mask), pretrained.network.features(ids, mask))

    # a few fine-tuning steps run, evaluate, and leave a checkpoint that reloads the same network shape
    metrics = finetune(make_cfg(tmp_path / "ft", ["task=spam", f"pretrained={t5_checkpoint}", *FAST],
                                config_name="finetune"))
    assert {"val/loss", "val/acc", "test/acc"} <= set(metrics), metrics
    assert math.isfinite(metrics["val/loss"]) and 0.0 <= metrics["test/acc"] <= 1.0
    tuned = SequenceClassificationModule.load_from_checkpoint(tmp_path / "ft" / "checkpoints" / "last.ckpt",
                                                              map_location="cpu", weights_only=False)
    assert tuned.network.config.vocab_size == module.network.config.vocab_size
