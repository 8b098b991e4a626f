"""Adversarial training (tasks/adversarial.py) and the text attacks it is measured with
(data/attacks.py): the geometry of each perturbation, that it ascends the loss, that it leaves the
plain path untouched when off, that it is exact under gradient accumulation and DDP, and that the
attacks are seeded and hit the requested share of the text."""

import gzip
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from conftest import DATA, make_cfg
from lmpretrain.data.attacks import NEIGHBOURS, attack_texts, char_noise, word_substitution
from lmpretrain.errors import ConfigError, find_user_error
from lmpretrain.finetune import build
from lmpretrain.plot import read_csv_metrics
from lmpretrain.tasks import SequenceClassificationModule, TokenClassificationModule
from lmpretrain.tasks.adversarial import AdversarialConfig, adversarial_loss, per_example_norm

TINY = {"arch": "bert", "vocab_size": 40, "block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16, "mlp_ratio": 2,
        "dropout": 0.0}
CFGS = {
    "fgm_l2": {"method": "fgm", "epsilon": 0.5},
    "fgm_linf": {"method": "fgm", "epsilon": 0.05, "norm": "linf"},
    "pgd_l2": {"method": "pgd", "epsilon": 0.5, "alpha": 0.3, "steps": 3},
    "pgd_linf": {"method": "pgd", "epsilon": 0.05, "alpha": 0.02, "steps": 3, "norm": "linf"},
    "freelb_l2": {"method": "freelb", "epsilon": 0.5, "alpha": 0.3, "steps": 3},
}


def tiny_classifier(adversarial: dict | None = None, dropout: float = 0.0, seed: int = 0):
    torch.manual_seed(seed)
    return SequenceClassificationModule(model={**TINY, "dropout": dropout}, labels=["a", "b", "c"],
                                        classifier_dropout=dropout, adversarial=adversarial)


def batch_of(n: int = 4, seed: int = 1) -> dict:
    """n examples of lengths 12, 9, 6, ... padded to the longest (pad id 0)."""
    g = torch.Generator().manual_seed(seed)
    lengths = [max(2, 12 - 3 * i) for i in range(n)]
    ids = torch.zeros(n, max(lengths), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n_i in enumerate(lengths):
        ids[i, :n_i] = torch.randint(1, 40, (n_i,), generator=g)
        mask[i, :n_i] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 3, (n,), generator=g)}


def adv(module, batch, cfg: dict):
    def loss_of():
        return F.cross_entropy(module(batch), batch["labels"])
    return adversarial_loss(AdversarialConfig(**cfg), module.network.tok_emb, loss_of, batch["attention_mask"])


def embedding_grad(module, batch) -> torch.Tensor:
    """d(clean loss)/d(token-embedding output), computed without the module under test: the lookup
    is done here, detached, and fed in by replacing the embedding's output."""
    e = module.network.tok_emb(batch["input_ids"]).detach().requires_grad_()
    handle = module.network.tok_emb.register_forward_hook(lambda m, a, out: e)
    try:
        loss = F.cross_entropy(module(batch), batch["labels"])
    finally:
        handle.remove()
    return torch.autograd.grad(loss, e)[0]


# -- geometry ------------------------------------------------------------------------------------
def test_fgm_is_epsilon_along_the_gradient_per_example():
    module, batch = tiny_classifier(), batch_of()
    g = embedding_grad(module, batch)  # (B, T, C)
    out = adv(module, batch, CFGS["fgm_l2"])
    delta = out.delta
    # per example (one (T, C) perturbation each), not per batch: every example gets exactly epsilon
    torch.testing.assert_close(per_example_norm(delta, "l2").flatten(), torch.full((4,), 0.5), rtol=1e-6, atol=0)
    torch.testing.assert_close(delta, 0.5 * g / per_example_norm(g, "l2"), rtol=1e-5, atol=1e-7)
    assert (delta[batch["attention_mask"] == 0] == 0).all()  # padding is never perturbed
    linf = adv(module, batch, CFGS["fgm_linf"]).delta  # FGSM: epsilon * sign(g) on every real coordinate
    real = batch["attention_mask"].bool()
    assert torch.equal(linf[real], 0.05 * g[real].sign()) and (linf[~real] == 0).all()


@pytest.mark.parametrize("norm,epsilon", [("l2", 0.3), ("linf", 0.02)])
def test_pgd_stays_in_the_epsilon_ball(norm, epsilon):
    """alpha = epsilon and 5 steps: without the projection the perturbation would leave the ball."""
    module, batch = tiny_classifier(), batch_of()
    out = adv(module, batch, {"method": "pgd", "epsilon": epsilon, "alpha": epsilon, "steps": 5, "norm": norm})
    n = per_example_norm(out.delta, norm).flatten()
    assert (n <= epsilon * (1 + 1e-6)).all(), n
    assert (n >= epsilon * (1 - 1e-6)).all(), n  # and it does reach the boundary (the projection is active)
    assert (out.delta[batch["attention_mask"] == 0] == 0).all()


@pytest.mark.parametrize("name", list(CFGS))
def test_the_perturbation_ascends_the_loss(name):
    """First-order ascent: the perturbed loss exceeds the clean one, and by more than a random
    perturbation of the same per-example norm does."""
    module, batch = tiny_classifier(), batch_of(seed=3)
    out = adv(module, batch, CFGS[name])
    assert out.adversarial.item() > out.clean.item() + 1e-4, (out.clean.item(), out.adversarial.item())
    norm = CFGS[name].get("norm", "l2")
    gen = torch.Generator().manual_seed(0)
    rises = []
    for _ in range(5):
        r = torch.randn(out.delta.shape, generator=gen) * batch["attention_mask"][..., None]
        if norm == "linf":
            r = r.sign() * per_example_norm(out.delta, "linf")
        else:
            r = r / per_example_norm(r, "l2") * per_example_norm(out.delta, "l2")
        handle = module.network.tok_emb.register_forward_hook(lambda m, a, o, r=r: o + r)
        try:
            with torch.no_grad():
                rises.append(F.cross_entropy(module(batch), batch["labels"]).item() - out.clean.item())
        finally:
            handle.remove()
    assert out.adversarial.item() - out.clean.item() > max(rises), (out.adversarial.item() - out.clean.item(), rises)


def test_freelb_averages_the_steps_and_pgd_adds_clean_and_adversarial():
    module, batch = tiny_classifier(), batch_of()
    pgd = adv(module, batch, CFGS["pgd_l2"])
    torch.testing.assert_close(pgd.total, pgd.clean + pgd.adversarial)
    clean = F.cross_entropy(module(batch), batch["labels"])
    freelb = adv(module, batch, CFGS["freelb_l2"])
    assert torch.equal(freelb.clean, clean)  # zero start: the first of the K passes is the clean one
    assert pgd.clean < freelb.total < freelb.adversarial  # a mean of rising losses


def test_freelb_random_start_has_zhu_et_al_size_on_real_tokens_only():
    """U(-1, 1) scaled by init_mag / sqrt(real tokens * C): L2 norm about init_mag / sqrt(3)."""
    module, batch = tiny_classifier(), batch_of()
    torch.manual_seed(0)
    out = adv(module, batch, {"method": "freelb", "epsilon": 10.0, "steps": 1, "init_mag": 0.6})
    n = per_example_norm(out.delta, "l2").flatten()
    assert ((n - 0.6 / 3**0.5).abs() < 0.08).all(), n
    assert (out.delta[batch["attention_mask"] == 0] == 0).all()
    assert not torch.equal(out.clean, F.cross_entropy(module(batch), batch["labels"]))  # the first pass is perturbed


# -- the training path ---------------------------------------------------------------------------
def test_adversarial_none_is_bit_identical_to_the_plain_path():
    """Same losses and gradients, bit for bit, with dropout on (same seed, same masks)."""
    batch = batch_of()
    old = tiny_classifier(None, dropout=0.1)
    new = tiny_classifier({"method": "none"}, dropout=0.1)
    torch.manual_seed(7)
    loss_old = old.log_train_loss(F.cross_entropy(old(batch), batch["labels"]))  # the path before this issue
    loss_old.backward()
    torch.manual_seed(7)
    loss_new = new.training_step(batch, 0)
    loss_new.backward()
    assert torch.equal(loss_old, loss_new)
    for (name, p), q in zip(old.named_parameters(), new.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        assert p.grad is None or torch.equal(p.grad, q.grad), name


def grads(module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", list(CFGS))
def test_two_half_batches_accumulate_to_the_full_batch_gradient(name):
    """What Lightning does with accumulate_grad_batches=2 (each micro-batch's loss / 2, one backward
    each) gives the gradient of the full batch: the perturbation is per example and does not depend
    on which examples share a batch (or how far they are padded). A per-batch normalisation fails here."""
    full = batch_of(6)
    module = tiny_classifier(CFGS[name])
    module.training_step(full, 0).backward()
    reference = grads(module)
    module.zero_grad()
    for part in (slice(0, 3), slice(3, 6)):
        half = {k: v[part] for k, v in full.items()}
        T = int(half["attention_mask"].sum(1).max())  # padded to its own longest, as the collate does
        half = {k: v[:, :T] if v.dim() == 2 else v for k, v in half.items()}
        (module.training_step(half, 0) / 2).backward()
    for n, g in grads(module).items():
        torch.testing.assert_close(g, reference[n], rtol=1e-4, atol=1e-6, msg=n)


def test_bad_config_is_one_config_error():
    with pytest.raises(ConfigError) as e:
        AdversarialConfig(method="pgd", epsilon=-1.0, norm="l1", steps=0)
    msg = str(e.value)
    assert "\n" not in msg and "adversarial.epsilon=-1.0" in msg and "adversarial.norm='l1'" in msg
    assert "adversarial.steps=0" in msg
    for bad, key in [({"method": "vat"}, "adversarial.method"), ({"alpha": 0.0}, "adversarial.alpha"),
                     ({"epsilon": float("nan")}, "adversarial.epsilon"), ({"eps": 1.0}, "unknown keys ['eps']"),
                     ({"method": "pgd", "init_mag": 0.1}, "FreeLB's random start")]:
        with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
            AdversarialConfig.from_dict(bad)
    with pytest.raises(ConfigError, match="TokenClassificationModule does not support adversarial training"):
        TokenClassificationModule(model=TINY, labels=["O"], adversarial={"method": "fgm"})


def test_config_group_reaches_the_task_and_bad_values_stop_the_build(tmp_path):
    cfg = make_cfg(tmp_path, ["task=spam", "adversarial=pgd", "adversarial.norm=linf"], config_name="finetune")
    assert cfg.task.adversarial == {"method": "pgd", "epsilon": 0.2, "alpha": 0.08, "steps": 3, "norm": "linf"}
    assert "adversarial" not in make_cfg(tmp_path, ["task=spam"], config_name="finetune").task  # none: nothing
    bad = make_cfg(tmp_path, ["task=spam", "adversarial=fgm", "adversarial.epsilon=-0.5"], config_name="finetune")
    with pytest.raises(Exception) as e:  # what build_run does with cfg.task, less the data and tokenizer
        instantiate(bad.task, model=TINY, labels=["ham", "spam"], _convert_="all")
    error = find_user_error(e.value)
    assert isinstance(error, ConfigError) and str(error) == "adversarial.epsilon=-0.5 must be >= 0"


# -- Lightning: accumulation and DDP -------------------------------------------------------------
# Nothing random (dropout 0), file order (data.shuffle=false), SGD (the update is linear in the gradient).
EXACT = ["task=spam", "debug=fast", "trainer.accelerator=cpu", "data.shuffle=false", "model.dropout=0.0",
         "task.classifier_dropout=0.0", "optimizer=sgd", "optimizer.lr=0.05", "scheduler.warmup_steps=0",
         "model.block_size=64", "tokenizer.vocab_size=2000", "evaluate_test=false", "trainer.max_steps=3",
         "trainer.limit_val_batches=1", "trainer.val_check_interval=3", "callbacks.model_checkpoint=null"]


def fitted_network(tmp_path, *overrides) -> tuple[dict, dict]:
    """The network's weights after 3 optimizer steps, and the final logged metrics."""
    datamodule, module, trainer = build(make_cfg(tmp_path, [*EXACT, *overrides], config_name="finetune"))
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 3
    return module.network.state_dict(), {k: float(v) for k, v in trainer.callback_metrics.items()}


@pytest.mark.slow  # two short fits: ~25 s
def test_accumulation_of_two_micro_batches_follows_the_double_batch(tmp_path):
    one, m1 = fitted_network(tmp_path / "one", "adversarial=pgd", "data.batch_size=8")
    two, m2 = fitted_network(tmp_path / "two", "adversarial=pgd", "data.batch_size=4",
                             "trainer.accumulate_grad_batches=2")
    assert "train/adv_loss" in m1 and "train/adv_loss" in m2
    start = build(make_cfg(tmp_path / "start", EXACT, config_name="finetune")).module.network.state_dict()
    moved = max((one[k] - start[k]).abs().max().item() for k in one)
    assert moved > 1e-3  # it trains, so the comparison is not trivial
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-6, msg=k)


def finetune_cli(out, *overrides) -> dict[str, dict[int, float]]:
    """`python -m lmpretrain.finetune`'s CSV metrics as {name: {step: value}}; one thread a process."""
    r = subprocess.run([sys.executable, "-m", "lmpretrain.finetune", *EXACT, "logger=csv", *overrides,
                        f"hydra.run.dir={out}"], check=False, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    return {name: dict(points) for name, points in read_csv_metrics(out).items()}


@pytest.mark.slow  # one- and two-process runs: ~50 s
def test_ddp_two_processes_match_one_process(tmp_path):
    """FGM under DDP (gloo, 2 CPU processes, 4 examples each) follows the one-process run with 8:
    the embedding gradient taken inside the step fires no gradient hook, and the one backward of
    clean + adversarial loss reduces once."""
    one = finetune_cli(tmp_path / "one", "adversarial=fgm", "data.batch_size=8")
    two = finetune_cli(tmp_path / "two", "adversarial=fgm", "data.batch_size=4", "strategy=ddp", "trainer.devices=2")
    for name in ("train/loss", "train/adv_loss", "val/loss"):
        assert sorted(two[name]) == sorted(one[name]), name
        for step, value in one[name].items():
            assert two[name][step] == pytest.approx(value, rel=2e-5, abs=1e-6), (name, step)
    assert one["train/adv_loss"][0] > one["train/loss"][0]


# -- attacks ------------------------------------------------------------------------------------
def spam_texts(n: int, chars: int) -> list[str]:
    with gzip.open(DATA / "spam.test.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"][:chars] for _, line in zip(range(n), f)]


def osa_distance(a: str, b: str) -> int:
    """Damerau-Levenshtein (optimal string alignment): insert, delete, substitute, swap cost 1."""
    prev2, prev = None, list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[-1]


def test_attacks_are_seeded():
    texts = spam_texts(20, 400)
    for kind in ("char", "word"):
        a = attack_texts(texts, kind, 0.1, seed=0)
        assert a == attack_texts(texts, kind, 0.1, seed=0)  # same seed: same texts
        assert a != attack_texts(texts, kind, 0.1, seed=1)
        assert sum(x != y for x, y in zip(a, texts)) >= 18
        assert attack_texts(texts, kind, 0.0, seed=0) == texts
        assert attack_texts(texts[5:6], kind, 0.1, seed=0)[0] != a[5]  # keyed by the index in the list


@pytest.mark.parametrize("rate", [0.05, 0.15])
def test_char_noise_edits_the_requested_share_of_letters(rate):
    texts, edits, wanted = spam_texts(15, 200), 0, 0
    for i, text in enumerate(texts):
        k = round(rate * sum(c.isalpha() for c in text))
        d = osa_distance(text, char_noise(text, rate, random.Random(i)))
        assert d <= k  # one operation per chosen letter
        edits, wanted = edits + d, wanted + k
    assert edits >= 0.85 * wanted, (edits, wanted)  # only where two edits meet is the distance below


def test_word_substitution_replaces_the_requested_share_of_words():
    words = [w for w in NEIGHBOURS] + ["pancake", "Tuesday", "KERNEL", "Bicycle"] * 10
    text = " ".join(words)
    out = word_substitution(text, 0.3, random.Random(0)).split(" ")
    assert len(out) == len(words)  # one word for one word, separators untouched
    changed = [(a, b) for a, b in zip(words, out) if a != b]
    assert len(changed) == round(0.3 * len(words))
    for a, b in changed:
        if a.lower() in NEIGHBOURS:
            assert b.lower() in NEIGHBOURS[a.lower()]
        else:  # a typo: same first letter and case, length within one
            assert b[0] == a[0] and abs(len(a) - len(b)) <= 1 and (a.isupper() == b.isupper() or len(b) < 2)
    texts = spam_texts(20, 600)  # real e-mails: a whitespace token can hold two chosen words ("e-mail")
    for i, t in enumerate(texts):
        before, after = t.split(), word_substitution(t, 0.2, random.Random(i)).split()
        k = round(0.2 * len(re.findall(r"[A-Za-z]{3,}", t)))
        assert len(after) == len(before) and 0.7 * k <= sum(a != b for a, b in zip(before, after)) <= k


@pytest.mark.slow
def test_bench_takes_adversarial_overrides_and_runs_plain_fine_tuning_beside_them(tmp_path):
    """`bench/adversarial.py adversarial.epsilon=... adversarial.alpha=...` (its documented use) sets
    each key for the methods that have it; the plain run has none and fgm no alpha, and both must
    still run (plumbing only: 4 steps)."""
    repo = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, str(repo / "bench" / "adversarial.py"), "--smoke", "--methods", "none,fgm",
                        "--out", str(tmp_path), "adversarial.epsilon=0.05", "adversarial.alpha=0.02"],
                       capture_output=True, text=True, timeout=600, cwd=repo, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results["results"]) == ["none", "fgm"] and results["overrides"] == ["adversarial.epsilon=0.05", "adversarial.alpha=0.02"]
    assert "epsilon: 0.05" in (tmp_path / "fgm" / "csv" / "hparams.yaml").read_text()
    assert "epsilon" not in (tmp_path / "none" / "csv" / "hparams.yaml").read_text()
