"""Knowledge distillation: the losses against hand computations, the layer capture against the
model's own attention, and real short runs of objective=distill on tiny-shakespeare (the teacher
frozen, in eval mode and unchanged; the student checkpoint free of it and loadable alone)."""

import math

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import make_cfg, require_data
from lmpretrain.checkpoints import load_module, read_checkpoint
from lmpretrain.distill import (
    HiddenProjection,
    LayerCapture,
    attention_loss,
    attention_mask_of,
    check_layer_map,
    hidden_state_loss,
    soft_target_loss,
    uniform_layer_map,
)
from lmpretrain.errors import ConfigError
from lmpretrain.inspect import capture_attention
from lmpretrain.models import GPT, Encoder, EncoderConfig, GPTConfig
from lmpretrain.objectives.distill import DistillModule
from lmpretrain.tasks.base import read_pretrained
from lmpretrain.tokenizers.build import TokenizerConfig, build_char_tokenizer
from lmpretrain.train import build

TEACHER = ["model.n_layer=3", "model.n_embd=96", "model.n_head=4"]
STUDENT = ["model.n_layer=2", "model.n_embd=32", "model.n_head=2"]


def short(steps: int, *extra: str) -> list[str]:
    return ["debug=fast", "model.block_size=32", "data.batch_size=8", f"trainer.max_steps={steps}",
            f"trainer.val_check_interval={steps}", "scheduler.warmup_steps=0", "optimizer.lr=3e-3",
            "callbacks.samples=null", "callbacks.curves=null", *extra]


# ---------------------------------------------------------------- losses as pure functions

def hand_kl(student: list[float], teacher: list[float], t: float) -> float:
    """KL(softmax(teacher / t) || softmax(student / t)) for one row, in plain Python."""
    def softmax(x):
        e = [math.exp(v / t) for v in x]
        return [v / sum(e) for v in e]
    p, q = softmax(teacher), softmax(student)
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))


def test_soft_target_loss_is_the_hand_computed_kl_times_t_squared():
    s = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    t = [[2.0, 0.0, 1.0], [1.0, 1.0, -2.0]]
    for temperature in (1.0, 2.0, 4.0):
        want = temperature ** 2 * np.mean([hand_kl(a, b, temperature) for a, b in zip(s, t)])
        got = soft_target_loss(torch.tensor(s), torch.tensor(t), temperature)
        assert got.item() == pytest.approx(want, rel=1e-5), temperature
    # T^2 scaling: without it the KL of softened distributions shrinks ~1/T^2; with it, it does not vanish
    kl_unscaled = [soft_target_loss(torch.tensor(s), torch.tensor(t), T).item() / T ** 2 for T in (1.0, 8.0)]
    assert kl_unscaled[1] < kl_unscaled[0] / 30
    assert soft_target_loss(torch.tensor(s), torch.tensor(t), 8.0).item() > kl_unscaled[0] / 3


def test_soft_target_loss_is_zero_for_the_teachers_own_logits_and_its_gradient_points_to_them():
    logits = torch.randn(5, 11)
    assert soft_target_loss(logits, logits.clone(), 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_target_loss(logits + 3.0, logits, 2.0).item() == pytest.approx(0.0, abs=1e-6)  # shift-invariant
    student = torch.zeros(5, 11, requires_grad=True)
    soft_target_loss(student, logits, 2.0).backward()
    # d/ds T^2 KL = T (q - p): the gradient is T times the difference of the softened distributions
    want = 2.0 * (torch.full((5, 11), 1 / 11) - F.softmax(logits / 2.0, -1)) / 5
    torch.testing.assert_close(student.grad, want)


def test_uniform_layer_map_and_its_checks():
    assert uniform_layer_map(4, 6) == [(1, 1), (2, 3), (3, 4), (4, 6)]
    assert uniform_layer_map(2, 2) == [(1, 1), (2, 2)]
    assert check_layer_map([[0, 0], [2, 6]], 2, 6) == [(0, 0), (2, 6)]
    with pytest.raises(ConfigError, match="out of range"):
        check_layer_map([[3, 1]], 2, 6)
    with pytest.raises(ConfigError, match="pairs"):
        check_layer_map([1, 2], 2, 6)


def test_hidden_state_loss_projects_student_width_to_teacher_width():
    torch.manual_seed(0)
    student = [torch.randn(2, 5, 32) for _ in range(3)]
    teacher = [torch.randn(2, 5, 96) for _ in range(3)]
    proj = HiddenProjection(3, 32, 96)
    assert [tuple(m.weight.shape) for m in proj.maps] == [(96, 32)] * 3
    assert [tuple(h.shape) for h in proj(student)] == [(2, 5, 96)] * 3
    want = np.mean([((s @ m.weight.T - t) ** 2).mean().item() for s, t, m in zip(student, teacher, proj.maps)])
    assert hidden_state_loss(student, teacher, proj).item() == pytest.approx(want, rel=1e-5)
    valid = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)  # padding does not count
    want = np.mean([((s[valid] @ m.weight.T - t[valid]) ** 2).mean().item()
                    for s, t, m in zip(student, teacher, proj.maps)])
    assert hidden_state_loss(student, teacher, proj, valid).item() == pytest.approx(want, rel=1e-5)
    same = HiddenProjection(2, 96, 96)  # equal widths: identity, nothing to learn
    assert not list(same.parameters())
    assert hidden_state_loss(teacher[:2], teacher[:2], same).item() == 0.0
    with pytest.raises(ValueError, match="projected"):
        hidden_state_loss(student, teacher, None)


def test_attention_loss_is_the_row_kl_under_the_causal_mask():
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    allowed = attention_mask_of(4, causal=True, attention_mask=None, device="cpu")
    assert attention_loss(t, t.clone(), allowed).item() == pytest.approx(0.0, abs=1e-6)
    # hand: per (batch, head, query) the KL over the keys <= query, mean over everything
    rows = [hand_kl(s[b, h, i, : i + 1].tolist(), t[b, h, i, : i + 1].tolist(), 1.0)
            for b in range(2) for h in range(3) for i in range(4)]
    assert attention_loss(s, t, allowed).item() == pytest.approx(np.mean(rows), rel=1e-5)
    # masked scores do not matter, and their gradient is zero (finite)
    s2 = s.clone().requires_grad_(True)
    loss = attention_loss(s2 + torch.triu(torch.full((4, 4), 50.0), 1), t, allowed)
    assert loss.item() == pytest.approx(np.mean(rows), rel=1e-5)
    loss.backward()
    assert torch.isfinite(s2.grad).all() and (s2.grad[..., torch.triu(torch.ones(4, 4), 1).bool()] == 0).all()
    # different head counts: the head-mean distributions are compared
    t6 = torch.randn(2, 6, 4, 4)
    mean_p = lambda x: (x.masked_fill(~allowed, -1e4).softmax(-1)).mean(1)
    p, q = mean_p(t6), mean_p(s)
    want = torch.where(p > 0, p * (p.log() - q.log()), 0.0).sum(-1).mean()
    assert attention_loss(s, t6, allowed).item() == pytest.approx(want.item(), rel=1e-4)


def test_layer_capture_reproduces_the_models_attention_and_hidden_states():
    torch.manual_seed(0)
    for net, causal in ((GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=2, n_head=2, n_embd=16,
                                       position="rotary")), True),
                        (Encoder(EncoderConfig(vocab_size=20, block_size=8, n_layer=2, n_head=2, n_embd=16)), False)):
        net.eval()
        ids = torch.randint(0, 20, (2, 8))
        cap = LayerCapture(net, [0, 2], [1, 2])
        with cap.recording(), capture_attention(net) as maps:
            h = net.features(ids)
        allowed = attention_mask_of(8, causal, None, "cpu")
        for i, (_, weights) in zip((1, 2), maps):
            scores = cap.scores(i)
            if allowed is not None:
                scores = scores.masked_fill(~allowed, float("-inf"))
            torch.testing.assert_close(scores.softmax(-1), weights)
        assert cap.hidden[0].shape == (2, 8, 16)
        if causal:  # GPT: the last block's output, before the final norm
            torch.testing.assert_close(net.norm(cap.hidden[2]), h)
        else:  # post-norm BERT: the last block's output is the features
            torch.testing.assert_close(cap.hidden[2], h)
        with torch.no_grad():  # not recording: nothing is overwritten
            net.features(torch.zeros_like(ids))
        assert cap.hidden[2].shape == (2, 8, 16) and cap.hidden[2].requires_grad
        cap.remove()


# ---------------------------------------------------------------- the objective in real runs

@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    """A small GPT teacher trained a few steps on tiny-shakespeare (char tokenizer)."""
    require_data("tinyshakespeare.txt")
    out = tmp_path_factory.mktemp("teacher")
    datamodule, module, trainer = build(make_cfg(out, short(6, *TEACHER)))
    trainer.fit(module, datamodule=datamodule)
    return out / "checkpoints" / "last.ckpt"


class Watch(L.Callback):
    """Train losses per step, and the teacher's state after each one."""

    def __init__(self):
        self.losses, self.teacher_training, self.teacher_grads = [], [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))
        teacher = pl_module.distill.teacher
        self.teacher_training.append(teacher.training or any(m.training for m in teacher.modules()))
        self.teacher_grads.append(any(p.requires_grad or p.grad is not None for p in teacher.parameters()))


def distill_run(tmp_path, teacher, steps, *extra):
    cfg = make_cfg(tmp_path, short(steps, "objective=distill", f"objective.teacher={teacher}", *STUDENT, *extra))
    datamodule, module, trainer = build(cfg)
    watch = Watch()
    trainer.callbacks.append(watch)
    trainer.fit(module, datamodule=datamodule)
    return module, trainer, watch


def test_distill_run_keeps_the_teacher_frozen_and_out_of_the_student_checkpoint(tmp_path, teacher_ckpt):
    teacher_weights = {k[len("network."):]: v for k, v in read_checkpoint(teacher_ckpt, "t")["state_dict"].items()}
    module, trainer, watch = distill_run(tmp_path, teacher_ckpt, 4, "objective.weights.hidden=1.0",
                                         "objective.weights.attention=1.0")
    logged = trainer.callback_metrics
    for key in ("train/hard_loss", "train/soft_loss", "train/hidden_loss", "train/attention_loss", "val/loss"):
        assert torch.isfinite(logged[key]), key
    # the teacher: eval mode, no gradients, weights exactly the checkpoint's after training
    teacher = module.distill.teacher
    assert watch.teacher_training == [False] * 4 and watch.teacher_grads == [False] * 4
    for name, value in teacher.state_dict().items():
        torch.testing.assert_close(value.cpu(), teacher_weights[name], rtol=0, atol=0)
    # the learned projections (32 -> 96 per mapped layer: uniform map 1->1, 2->3) trained with the student
    assert module.distill.pairs == [(1, 1), (2, 3)]
    assert [tuple(m.weight.shape) for m in module.distill.projection.maps] == [(96, 32)] * 2
    # the gradient norm that clipping and train/grad_norm use is the student's alone (the projections
    # are clipped on their own), so it compares with a run without a teacher
    assert {id(p) for p in module._parameters_to_clip()[0]} == {id(p) for p in module.network.parameters()}
    # the student checkpoint: student network + projections, nothing of the teacher
    ckpt_path = tmp_path / "checkpoints" / "last.ckpt"
    ckpt = read_checkpoint(ckpt_path, "ckpt")
    keys = list(ckpt["state_dict"])
    assert all(k.startswith(("network.", "losses.distill.projection.")) for k in keys), keys
    student_params = sum(v.numel() for v in module.network.state_dict().values())
    stored = sum(v.numel() for k, v in ckpt["state_dict"].items() if k.startswith("network."))
    assert stored == student_params < sum(v.numel() for v in teacher_weights.values()) / 5
    assert ckpt["hyper_parameters"]["teacher_model"]["n_embd"] == 96
    # ... which rebuilds alone (the teacher file gone) with load_module, and validates without a teacher
    moved = teacher_ckpt.with_suffix(".away")
    teacher_ckpt.rename(moved)
    try:
        reloaded = load_module(ckpt_path)
        assert isinstance(reloaded, DistillModule) and reloaded.distill.teacher is None
        for name, value in module.state_dict().items():
            torch.testing.assert_close(reloaded.state_dict()[name], value.cpu())
        assert read_pretrained(str(ckpt_path))["network"].keys() == module.network.state_dict().keys()
    finally:
        moved.rename(teacher_ckpt)


def test_distill_loss_falls_in_a_short_run(tmp_path, teacher_ckpt):
    _, trainer, watch = distill_run(tmp_path, teacher_ckpt, 30)
    first, last = np.mean(watch.losses[:3]), np.mean(watch.losses[-5:])
    assert last < first - 0.25, (first, last)  # 0.5 hard + 0.5 soft: ~2.14 -> ~1.73 here
    assert 0 < float(trainer.callback_metrics["train/hard_loss"]) < math.log(65) - 0.5  # below uniform over the chars


def gpt(vocab: int) -> dict:
    return {"arch": "gpt", "vocab_size": vocab, "block_size": 32, "n_layer": 1, "n_head": 2, "n_embd": 16}


def test_teacher_with_another_vocabulary_is_refused_in_one_line(teacher_ckpt):
    module = DistillModule(gpt(70), teacher=str(teacher_ckpt))
    with pytest.raises(ConfigError, match=r"vocabulary of \d+ tokens, the student 70") as e:
        module.load_teacher()
    assert "\n" not in str(e.value)
    # same size, other token ids: refused as well
    teacher = load_module(teacher_ckpt)
    vocab = teacher.network.config.vocab_size
    other = build_char_tokenizer("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ!?:;,.'-&$"[: vocab - 1],
                                 TokenizerConfig(special_tokens=["<|endoftext|>"]))
    assert other.get_vocab_size() == vocab
    module = DistillModule(gpt(vocab), teacher=str(teacher_ckpt))
    module.connect(tokenizer_json=other.to_str())
    with pytest.raises(ConfigError, match="other token ids"):
        module.load_teacher()
    with pytest.raises(ConfigError, match="one family"):
        DistillModule({**gpt(vocab), "arch": "bert"}, teacher=str(teacher_ckpt)).load_teacher()
    with pytest.raises(ConfigError, match="weights"):
        DistillModule(gpt(vocab), teacher=str(teacher_ckpt), weights={"hard": 1.0, "kl": 1.0})


def test_an_hf_gpt2_folder_is_a_teacher(tmp_path, teacher_ckpt):
    pytest.importorskip("transformers")
    from lmpretrain.export.hf import save_hf
    from lmpretrain.export.source import load_source

    source = load_source(teacher_ckpt)
    save_hf(source, tmp_path / "hf")
    module = DistillModule({**gpt(source.network.config.vocab_size), "block_size": 32}, teacher=str(tmp_path / "hf"))
    module.connect(tokenizer_json=source.tokenizer_json)
    teacher = module.load_teacher()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert module.hparams["teacher_model"] == {"arch": "gpt", "n_layer": 3, "n_head": 4, "n_embd": 96,
                                               "vocab_size": source.network.config.vocab_size, "block_size": 32}
    ids = torch.randint(0, source.network.config.vocab_size, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(teacher(ids), source.network(ids), atol=1e-4, rtol=1e-4)


def test_masked_lm_student_distils_from_an_encoder_on_the_same_corrupted_inputs():
    tok = build_char_tokenizer("abcdefghij ", TokenizerConfig(special_tokens=["[PAD]", "[CLS]", "[SEP]", "[MASK]"]))
    V = tok.get_vocab_size()
    torch.manual_seed(0)
    teacher = Encoder(EncoderConfig(vocab_size=V, block_size=16, n_layer=4, n_head=4, n_embd=32, dropout=0.0))
    student = {"arch": "bert", "vocab_size": V, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 16,
               "dropout": 0.0}
    module = DistillModule(student, teacher="unused", weights={"hard": 1, "soft": 1, "hidden": 1, "attention": 1},
                           masking={"probability": 0.3})
    module.connect(tokenizer_json=tok.to_str())
    module.distill.build(module.student_shape(), {"n_layer": 4, "n_embd": 32})
    module.distill.set_teacher(teacher)
    ids = torch.randint(4, V, (4, 16))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    batch["attention_mask"][:, 12:] = 0
    seen = []
    teacher.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]) or None)
    out = module.distill(module.network, batch, seed=1)
    corrupted, labels = module.distill.inputs(batch, 1)
    assert (labels != -100).any() and (corrupted != ids).any()
    assert module.distill.pairs == [(1, 2), (2, 4)]
    for key in ("hard_loss", "soft_loss", "hidden_loss", "attention_loss"):
        assert torch.isfinite(out[key]) and out[key] > 0, key
    out["loss"].backward()
    assert all(p.grad is not None for p in module.distill.projection.parameters())
    assert all(p.grad is None for p in teacher.parameters()) and not teacher.training
    # the teacher read the same corrupted ids as the student: its embedding of them is what block 0 got
    expected = teacher.emb_norm(teacher.tok_emb(corrupted) + teacher.pos_emb(torch.arange(16))
                                + teacher.seg_emb(torch.zeros_like(corrupted)))
    torch.testing.assert_close(seen[-1], expected)


# ---------------------------------------------------------------- fine-tuning: task logits

# (task, its distilled preset, the student module's class name, a file of its training split, extra overrides)
TASK_DISTILL = {
    "spam": ("spam_distill", "DistilledClassificationModule", "spam.train.jsonl.gz", []),
    "ner_wnut": ("ner_wnut_distill", "DistilledTokenClassificationModule", "ner_wnut.train.conll",
                 ["tokenizer.vocab_size=2000"]),
}


@pytest.mark.slow  # two short fine-tunings incl. a WordPiece tokenizer trained on the task (~15-20 s on 2 cores)
@pytest.mark.parametrize("task", list(TASK_DISTILL))
def test_task_distillation_trains_on_a_frozen_teachers_logits(tmp_path, task):
    import lmpretrain.tasks.distill as task_distill
    from lmpretrain.finetune import build as build_task

    preset, class_name, train_file, extra = TASK_DISTILL[task]
    require_data(train_file)
    common = ["debug=fast", "model.block_size=32", "data.batch_size=8", "trainer.max_steps=4",
              "trainer.val_check_interval=4", "evaluate_test=false", "callbacks.samples=null",
              "callbacks.curves=null", *extra]
    datamodule, teacher_module, trainer = build_task(make_cfg(tmp_path / "teacher", [f"task={task}", *common],
                                                              "finetune"))
    trainer.fit(teacher_module, datamodule=datamodule)
    teacher_ckpt = tmp_path / "teacher" / "checkpoints" / "last.ckpt"
    overrides = [f"task={preset}", f"task.teacher={teacher_ckpt}", "model.n_layer=1", "model.n_embd=32",
                 "model.n_head=2", *common]
    datamodule, module, trainer = build_task(make_cfg(tmp_path / "student", overrides, "finetune"))
    trainer.fit(module, datamodule=datamodule)
    student_class = getattr(task_distill, class_name)
    assert type(module) is student_class
    logged = trainer.callback_metrics
    assert float(logged["train/soft_loss"]) > 0 and torch.isfinite(logged["val/loss"])
    teacher = module.teacher
    assert type(teacher) is student_class.teacher_class
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    saved = read_checkpoint(teacher_ckpt, "t")["state_dict"]
    for name, value in teacher.state_dict().items():
        torch.testing.assert_close(value.cpu(), saved[name], rtol=0, atol=0)
    ckpt_path = tmp_path / "student" / "checkpoints" / "last.ckpt"
    assert all(k.startswith("network.") for k in read_checkpoint(ckpt_path, "c")["state_dict"])
    reloaded = load_module(ckpt_path)  # no teacher needed
    assert reloaded.teacher is None and reloaded.network.config.n_embd == 32
    # a teacher of other labels is refused
    wrong = student_class(dict(module.hparams["model"]), ["a", "b", "c"], teacher=str(teacher_ckpt))
    wrong.connect(tokenizer_json=module.tokenizer_json)
    with pytest.raises(ConfigError, match="labels"):
        wrong.load_teacher()


TINY_BERT = {"arch": "bert", "vocab_size": 40, "block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16,
             "mlp_ratio": 2, "dropout": 0.0}


def test_token_distillation_scores_the_labelled_positions_only():
    from lmpretrain.tasks.distill import DistilledTokenClassificationModule

    module = DistilledTokenClassificationModule(TINY_BERT, ["B-x", "I-x", "O"], weights={"hard": 0.3, "soft": 0.7},
                                                temperature=2.0)
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 5, 3, generator=g), torch.randn(2, 5, 3, generator=g)
    labels = torch.tensor([[-100, 0, 1, -100, 2], [-100, 2, -100, -100, -100]])
    got = module.distillation_loss(student, teacher, labels, parts := {})
    scored = labels != -100
    want_hard = F.cross_entropy(student[scored], labels[scored])
    want_soft = 4.0 * np.mean([hand_kl(s.tolist(), t.tolist(), 2.0) for s, t in zip(student[scored], teacher[scored])])
    assert parts["hard_loss"].item() == pytest.approx(want_hard.item(), rel=1e-5)
    assert parts["soft_loss"].item() == pytest.approx(want_soft, rel=1e-5)
    assert got.item() == pytest.approx(0.3 * want_hard.item() + 0.7 * want_soft, rel=1e-5)
    # what the teacher says at a special token or a later sub-word (label -100) does not count
    moved = teacher.clone()
    moved[~scored] += 10 * torch.randn(int((~scored).sum()), 3, generator=g)
    assert module.distillation_loss(student, moved, labels, {}).item() == pytest.approx(got.item(), rel=1e-6)
    with pytest.raises(ConfigError, match="weights"):
        DistilledTokenClassificationModule(TINY_BERT, ["O"], weights={"hard": 0.0, "soft": 0.0})


def test_init_from_teacher_copies_the_paired_blocks_and_everything_around_them(tmp_path, teacher_ckpt):
    """DistilBERT's initialisation: a 2-block student of the 3-block teacher's width starts with the
    teacher's embeddings, final norm and head, block 1 from teacher block 1 and block 2 from teacher
    block 3 (the uniform map), so its first loss is the teacher's neighbourhood, not ln(vocab)."""
    teacher = {k[len("network."):]: v for k, v in read_checkpoint(teacher_ckpt, "t")["state_dict"].items()}
    wide = ["model.n_layer=2", "model.n_embd=96", "model.n_head=4"]
    first_losses = {}
    for init in (True, False):
        cfg = make_cfg(tmp_path / str(init), short(2, "objective=distill", f"objective.teacher={teacher_ckpt}", *wide,
                                                   f"objective.init_from_teacher={str(init).lower()}"))
        datamodule, module, trainer = build(cfg)
        module.setup("fit")
        student = module.network.state_dict()
        copied = {k: v for k, v in student.items() if torch.equal(v, teacher[k.replace("blocks.1.", "blocks.2.")])}
        if init:
            assert module.distill.resolve_layer_map({"n_layer": 2}, {"n_layer": 3}) == [(1, 1), (2, 3)]
            assert set(copied) == set(student), sorted(set(student) - set(copied))[:3]
            assert not torch.equal(student["blocks.1.attn.q.weight"], teacher["blocks.1.attn.q.weight"])
        else:
            assert not any(k.startswith("blocks.") or k.endswith("emb.weight") for k in copied), sorted(copied)
        watch = Watch()
        trainer.callbacks.append(watch)
        trainer.fit(module, datamodule=datamodule)
        first_losses[init] = watch.losses[0]
    assert first_losses[True] < first_losses[False] - 0.3, first_losses
    # a student of another width or head count cannot start from the teacher: one line each
    vocab = load_module(teacher_ckpt).network.config.vocab_size
    for shape, match in (({"n_embd": 16, "n_head": 4}, r"needs the teacher.s width"),
                         ({"n_embd": 96, "n_head": 2}, "the student has 2 heads, the teacher 4")):
        module = DistillModule({**gpt(vocab), **shape}, teacher=str(teacher_ckpt), init_from_teacher=True)
        with pytest.raises(ConfigError, match=match) as e:
            module.setup("fit")
        assert "\n" not in str(e.value)
