"""Every config group option composes and resolves; every objective, strategy, precision, optimizer
and scheduler option builds into what it names and (where this CPU can) trains a step; every
experiment trains with debug=fast."""

import gzip
import json
import math
import pickle
from itertools import pairwise

import pytest
import torch
from omegaconf import OmegaConf

from conftest import DATA, make_cfg, require_data
from lmpretrain.config import CONF_DIR, to_dict
from lmpretrain.distributed.parallel import FSDP2Strategy
from lmpretrain.distributed.trainer_config import resolve_trainer_config
from lmpretrain.errors import ConfigError, find_user_error
from lmpretrain.models import build_network
from lmpretrain.train import build, train

GROUPS = ["data", "tokenizer", "model", "objective", "optimizer", "scheduler", "trainer", "strategy",
          "precision", "logger", "callbacks", "paths", "debug"]


def options(group):
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes(tmp_path, group, option):
    cfg = make_cfg(tmp_path, [f"{group}={option}"])
    resolved = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert resolved["trainer"]["_target_"] == "lightning.pytorch.Trainer"


# --- Options built and run: one optimizer step (and one validation batch) on CPU per option. -----------

ONE_STEP = ["debug=fast", "trainer.accelerator=cpu", "trainer.max_steps=1", "trainer.val_check_interval=1",
            "trainer.limit_val_batches=1", "data.batch_size=4", "model.block_size=32"]


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """1,500 Debian package descriptions as jsonl ({"text", "summary"}): data for every encoder
    objective in seconds (the full corpus takes ~1 min to split, train WordPiece on and tokenize).
    Its tokenizer and token files land in the session's cache, shared by the cases below."""
    require_data("debian_packages.train.jsonl.gz")
    path = tmp_path_factory.mktemp("corpus") / "debian_small.jsonl"
    with gzip.open(DATA / "debian_packages.train.jsonl.gz", "rt") as src, open(path, "w") as out:
        for line, _ in zip(src, range(1500)):
            doc = json.loads(line)
            out.write(json.dumps({"text": doc["description"], "summary": doc["summary"]}) + "\n")
    return path


def one_step(tmp_path, overrides):
    """Build the run, train one step; (cfg, module, trainer, logged metrics, names of the network's
    parameters that the step changed)."""
    cfg = make_cfg(tmp_path, [*ONE_STEP, *overrides])
    datamodule, module, trainer = build(cfg)
    before = {k: p.detach().clone() for k, p in module.network.named_parameters()}
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 1
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    changed = {k for k, p in module.network.named_parameters() if not torch.equal(before[k], p.detach())}
    return cfg, module, trainer, metrics, changed


def block_matrices(network) -> set[str]:
    """Names of the weight matrices of every Transformer block (what every objective trains)."""
    from lmpretrain.models.blocks import Block

    blocks = {id(m) for m in network.modules() if isinstance(m, Block)}
    return {f"{name}.{p}" for name, m in network.named_modules() if id(m) in blocks
            for p, w in m.named_parameters() if w.ndim >= 2}


@pytest.fixture(scope="module")
def reference_step(tmp_path_factory):
    """train/loss of the first step of the default run (gpt_tiny on tinyshakespeare) in fp32, one process."""
    _, _, trainer, metrics, _ = one_step(tmp_path_factory.mktemp("reference"), ["precision=32-true"])
    assert trainer.precision == "32-true"
    return metrics["train/loss"]


ENCODER = ["tokenizer=wordpiece", "tokenizer.vocab_size=2000"]
OBJECTIVE_RUNS = {  # {corpus} = small_corpus
    "causal_lm": [],  # train.yaml's defaults: tinyshakespeare, char tokenizer, gpt_tiny
    # {teacher}: a 2-step gpt_tiny of the same char tokenizer (fixture distill_teacher)
    "distill": ["objective.teacher={teacher}", "model.n_layer=2", "model.n_embd=64", "model.n_head=2"],
    "contrastive": ["data=pairs", "data.files=['{corpus}']", "data.examples=texts", *ENCODER, "model=bert_tiny"],
    "electra": ["data=text", "data.files=['{corpus}']", *ENCODER, "model=bert_tiny"],
    "mlm": ["data=text", "data.files=['{corpus}']", *ENCODER, "model=bert_tiny"],
    "mlm_nsp": ["data=pairs", "data.files=['{corpus}']", "data.examples=nsp", *ENCODER, "model=bert_tiny"],
    "mlm_sop": ["data=pairs", "data.files=['{corpus}']", "data.examples=sop", *ENCODER, "model=bert_tiny"],
    "multitask": ["data=pairs", "data.files=['{corpus}']", "data.examples=sop", *ENCODER, "model=bert_tiny"],
    "span_corruption": ["data=text", "data.files=['{corpus}']", *ENCODER, "model=t5_tiny"],
}


@pytest.fixture(scope="module")
def distill_teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    train(make_cfg(out, [o for o in ONE_STEP if not o.startswith("trainer.max_steps")] + ["trainer.max_steps=2"]))
    return out / "checkpoints" / "last.ckpt"


def test_objective_runs_cover_every_objective_option():
    assert sorted(OBJECTIVE_RUNS) == options("objective")


@pytest.mark.parametrize("objective", sorted(OBJECTIVE_RUNS))
def test_every_objective_trains_a_step_from_chance(tmp_path, small_corpus, objective, request):
    """Each objective builds the module it names and trains its network. At initialization every
    prediction is near uniform, so a token loss starts at ln(vocabulary) and a two-way sentence loss
    at ln 2; the logged parts add up to the logged total."""
    teacher = request.getfixturevalue("distill_teacher") if objective == "distill" else None
    overrides = [o.format(corpus=small_corpus, teacher=teacher) for o in OBJECTIVE_RUNS[objective]]
    cfg, module, _, m, changed = one_step(tmp_path, [f"objective={objective}", *overrides])
    assert type(module).__name__ == cfg.objective._target_.rsplit(".", 1)[-1]
    assert block_matrices(module.network) <= changed  # the whole trunk trained
    if module.uses_every_parameter:  # what lets DDP skip its unused-parameter search: it must hold
        assert changed == {k for k, _ in module.network.named_parameters()}
    ln_vocab = math.log(module.network.config.vocab_size)  # span corruption: its sentinels included
    if objective == "distill":  # 0.5 hard + 0.5 soft (T^2 KL to a near-uniform teacher: near 0)
        assert m["train/hard_loss"] == pytest.approx(ln_vocab, abs=0.25)
        assert m["train/loss"] == pytest.approx(0.5 * m["train/hard_loss"] + 0.5 * m["train/soft_loss"], rel=1e-5)
        assert 0 <= m["train/soft_loss"] < 0.5
        assert m["val/loss"] == pytest.approx(ln_vocab, abs=0.25)  # validation: the student's own objective
    elif objective in ("causal_lm", "mlm", "span_corruption"):
        if objective == "span_corruption":
            # T5's N(0, 1) tied embedding: each decoder input's own token gets a logit of up to
            # sqrt(n_embd) (its embedding . itself, scaled by n_embd**-0.5) while the rest are ~N(0, 1),
            # so the first loss sits above chance, by less than that one spike.
            assert ln_vocab < m["train/loss"] < ln_vocab + math.sqrt(module.network.config.n_embd), m
        else:
            assert m["train/loss"] == pytest.approx(ln_vocab, abs=0.25)
        assert m["val/ppl"] == pytest.approx(math.exp(m["val/loss"]), rel=1e-4)
    elif objective in ("mlm_nsp", "mlm_sop"):
        pair = objective.removeprefix("mlm_")
        assert m["train/loss"] == pytest.approx(m["train/mlm_loss"] + m[f"train/{pair}_loss"], abs=1e-5)
        assert m["train/mlm_loss"] == pytest.approx(ln_vocab, abs=0.25)
        assert m[f"train/{pair}_loss"] == pytest.approx(math.log(2), abs=0.1)
        assert m["val/loss"] == pytest.approx(m["val/mlm_loss"] + m[f"val/{pair}_loss"], abs=1e-5)
        assert m["val/ppl"] == pytest.approx(math.exp(m["val/mlm_loss"]), rel=1e-4)
        assert 0 <= m[f"val/{pair}_acc"] <= 1 and 0 <= m["val/mlm_acc"] <= 1
    elif objective == "electra":  # the generator's MLM at ln V, the detector's near-zero logits at ln 2
        assert m["train/mlm_loss"] == pytest.approx(ln_vocab, abs=0.25)
        assert m["train/rtd_loss"] == pytest.approx(math.log(2), abs=0.1)
        assert m["train/loss"] == pytest.approx(m["train/mlm_loss"] + 50 * m["train/rtd_loss"], rel=1e-5)
        assert m["val/loss"] == pytest.approx(m["val/mlm_loss"] + 50 * m["val/rtd_loss"], rel=1e-5)
    elif objective == "multitask":
        weights = {name: float(loss.weight) for name, loss in cfg.objective.losses.items()}
        assert weights == {"mlm": 0.7, "sop": 0.3}
        # Validation scores every loss, weighted; a training step trains the one loss it sampled.
        assert m["val/loss"] == pytest.approx(0.7 * m["val/mlm/loss"] + 0.3 * m["val/sop/loss"], rel=1e-5)
        assert m["val/mlm/loss"] == pytest.approx(ln_vocab, abs=0.25)
        assert m["val/sop/loss"] == pytest.approx(math.log(2), abs=0.1)
        trained = [name for name in weights if f"train/{name}/loss" in m]
        assert len(trained) == 1 and m["train/loss"] == pytest.approx(m[f"train/{trained[0]}/loss"])
    else:  # contrastive: InfoNCE over the batch's 4 candidates starts at most near chance, ln 4
        assert 0 < m["train/loss"] < math.log(4) + 0.25
        assert m["val/alignment"] >= 0 and m["val/uniformity"] <= 0  # a mean squared distance; log E exp(-2 d^2)


def test_strategy_tests_cover_every_strategy_option():
    assert options("strategy") == ["auto", "ddp", "ddp_spawn", "fsdp"]


def test_strategy_auto_trains_in_this_process(tmp_path, reference_step):
    _, _, trainer, m, _ = one_step(tmp_path, ["strategy=auto", "precision=32-true"])
    assert type(trainer.strategy).__name__ == "SingleDeviceStrategy" and trainer.world_size == 1
    assert m["train/loss"] == reference_step


@pytest.mark.parametrize("strategy,start_method", [("ddp", "popen"), ("ddp_spawn", "spawn")])
def test_ddp_strategies_are_built_for_two_cpu_processes(tmp_path, strategy, start_method):
    """Starting the processes is tests/distributed/'s job; here: the Trainer holds the strategy the
    option names, with gloo on CPU, the launcher of its start method, and, for spawn, a run that
    pickles (the spawned processes receive the Trainer, module and DataModule pickled)."""
    cfg = make_cfg(tmp_path, [*ONE_STEP, f"strategy={strategy}", "trainer.devices=2"])
    datamodule, module, trainer = build(cfg)
    from lightning.pytorch.strategies import DDPStrategy

    s = trainer.strategy
    assert type(s) is DDPStrategy and s.num_processes == 2 and trainer.world_size == 2
    assert s._start_method == start_method and s._get_process_group_backend() == "gloo"
    assert s._ddp_kwargs["find_unused_parameters"] is False  # causal LM trains every parameter
    launcher = type(s.launcher).__name__
    assert launcher == {"popen": "_SubprocessScriptLauncher", "spawn": "_MultiProcessingLauncher"}[start_method]
    if strategy == "ddp":
        assert s._ddp_kwargs["gradient_as_bucket_view"] is True
    else:
        _, copy, _ = pickle.loads(pickle.dumps((datamodule, module, trainer)))
        for (name, a), (_, b) in zip(module.state_dict().items(), copy.state_dict().items()):
            assert torch.equal(a, b), name


def test_fsdp_is_refused_on_one_process_and_built_with_its_settings_on_two(tmp_path):
    with pytest.raises(Exception) as info:
        build(make_cfg(tmp_path, [*ONE_STEP, "strategy=fsdp"]))
    error = find_user_error(info.value)
    assert isinstance(error, ConfigError) and "\n" not in str(error)
    assert str(error).startswith("strategy=fsdp shards over processes but trainer.devices x trainer.num_nodes = 1")
    _, _, trainer = build(make_cfg(tmp_path, [*ONE_STEP, "strategy=fsdp", "trainer.devices=2"]))
    s = trainer.strategy
    assert type(s) is FSDP2Strategy and s.num_processes == 2
    assert (s.sharding, s.shard_size, s.tensor_parallel, s.wrap, s.reshard_after_forward) == \
        ("full", None, 1, ("Block",), True)
    assert s._save_distributed_checkpoint is True


@pytest.mark.parametrize("precision", options("precision"))
def test_every_precision_trains_a_step_or_is_refused_on_cpu(tmp_path, reference_step, precision):
    """auto is fp32 on CPU (the same loss to the bit); bf16 runs (slowly) within bf16's ~3 digits of
    fp32, bf16-true with bf16 weights; fp16 autocast does not exist on CPU: one clear error."""
    if precision == "16-mixed":
        with pytest.raises(Exception) as info:
            build(make_cfg(tmp_path, [*ONE_STEP, "precision=16-mixed"]))
        error = find_user_error(info.value)
        assert isinstance(error, ConfigError)
        assert str(error) == "precision=16-mixed (fp16 with loss scaling) needs a GPU; on CPU use precision=32-true"
        return
    _, module, trainer, m, _ = one_step(tmp_path, [f"precision={precision}"])
    expected = "32-true" if precision == "auto" else precision
    assert trainer.precision == expected
    dtype = torch.bfloat16 if precision == "bf16-true" else torch.float32
    assert {p.dtype for p in module.network.parameters()} == {dtype}
    if expected == "32-true":
        assert m["train/loss"] == reference_step
    else:
        assert m["train/loss"] == pytest.approx(reference_step, rel=3e-2) and m["train/loss"] != reference_step


@pytest.mark.parametrize("optimizer", options("optimizer"))
def test_every_optimizer_gets_its_config_and_steps(tmp_path, optimizer):
    cfg, module, trainer, _, changed = one_step(tmp_path, [f"optimizer={optimizer}"])
    opt = trainer.optimizers[0]
    assert type(opt).__name__.lower() == cfg.optimizer.name == optimizer
    decay, no_decay = opt.param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (cfg.optimizer.weight_decay, 0.0)
    assert decay["initial_lr"] == cfg.optimizer.lr  # the schedule's peak
    for key, value in to_dict(cfg.optimizer).items():
        if key not in ("name", "lr", "weight_decay", "fused", "layer_decay", "head_only_steps"):  # ours, not torch's
            assert decay[key] == (tuple(value) if isinstance(value, list) else value), key
    assert block_matrices(module.network) <= changed


SCHEDULE_STEPS = 40
SCHEDULE_OVERRIDES = {"cosine_restarts": ["scheduler.period=10"], "cyclic": ["scheduler.half_cycle=10"]}


@pytest.mark.parametrize("scheduler", options("scheduler"))
def test_every_scheduler_gives_the_curve_its_config_describes(tmp_path, scheduler):
    """The learning rate per optimizer step, from the config through the module's LambdaLR: warmup
    `lr * (step + 1) / (warmup + 1)` to the peak, then each option's shape; `max_steps` follows
    trainer.max_steps."""
    warm = ["scheduler.warmup_steps=4"] if scheduler != "cyclic" else []
    cfg = make_cfg(tmp_path, ["debug=fast", f"trainer.max_steps={SCHEDULE_STEPS}", "optimizer.lr=1e-2",
                              f"scheduler={scheduler}", *warm, *SCHEDULE_OVERRIDES.get(scheduler, [])])
    _, module, _ = build(cfg)
    sched = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(SCHEDULE_STEPS + 1):
        lrs.append(sched.get_last_lr()[0])
        sched.optimizer.step()
        sched.step()
    lr, min_lr = 1e-2, cfg.scheduler.get("min_lr", 0.0)
    assert max(lrs) == pytest.approx(lr) and min(lrs) >= min_lr - 1e-12
    if scheduler == "cyclic":  # triangular: min_lr -> lr -> min_lr every 2 x half_cycle
        assert (lrs[0], lrs[10], lrs[20], lrs[30]) == pytest.approx((min_lr, lr, min_lr, lr))
        return
    assert lrs[:5] == pytest.approx([lr * k / 5 for k in (1, 2, 3, 4, 5)])  # warmup, then the peak at step 4
    if scheduler in ("cosine", "linear", "wsd"):
        assert lrs[SCHEDULE_STEPS] == pytest.approx(min_lr, abs=1e-12)
        assert all(a >= b for a, b in pairwise(lrs[4:]))  # never rises after warmup
    if scheduler == "wsd":  # stable until the last 20% of the steps
        assert lrs[4:33] == pytest.approx([lr] * 29) and lrs[33] < lr
    if scheduler == "constant":
        assert lrs[4:] == pytest.approx([lr] * (SCHEDULE_STEPS - 3))
    if scheduler == "inverse_sqrt":
        assert lrs[16] == pytest.approx(lr / 2) and lrs[36] == pytest.approx(lr / 3)
    if scheduler == "cosine_restarts":  # back to the peak after each cycle (10, then 20 steps)
        assert lrs[14] == pytest.approx(lr) and lrs[34] == pytest.approx(lr) and lrs[13] < lr / 10


GPU_RECIPES = {"gpt2_124m"}  # a step is ~0.5M tokens: checked below at reduced size instead


@pytest.mark.parametrize("experiment", sorted(set(options("experiment")) - GPU_RECIPES))
def test_every_experiment_runs_fast(tmp_path, experiment):
    metrics = train(make_cfg(tmp_path, [f"experiment={experiment}", "debug=fast"]))
    assert metrics["val/loss"] > 0 and metrics["train/loss"] > 0
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_gpt2_124m_recipe_is_gpt2_small_and_runs_when_shrunk(tmp_path):
    cfg = make_cfg(tmp_path, ["experiment=gpt2_124m"])
    network = build_network({**to_dict(cfg.model), "vocab_size": 50304})
    assert sum(p.numel() for p in network.parameters()) == 124_475_904  # nanoGPT's GPT-2 124M, vocab 50304
    trainer = resolve_trainer_config(cfg)
    assert (trainer.accumulate_grad_batches, cfg.data.batch_size * 1024 * 30) == (30, 491_520)
    assert (cfg.optimizer.lr, cfg.scheduler.min_lr, list(cfg.optimizer.betas)) == (6e-4, 6e-5, [0.9, 0.95])
    # The same recipe, shrunk to CPU size: data, BPE training, schedule and objective fit together.
    small = ["model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=64", "data.batch_size=4",
             "global_batch_size=8", "tokenizer.vocab_size=600", "runtime.compile=false", "data.num_workers=0"]
    metrics = train(make_cfg(tmp_path, ["experiment=gpt2_124m", "debug=fast", *small]))
    assert metrics["val/loss"] > 0 and metrics["train/loss"] > 0
