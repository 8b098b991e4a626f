"""Does distillation pay? A small GPT student trained on tiny-shakespeare (char level) with and
without a larger teacher -- same seed, init, data order, tokens, steps and schedule -- in one run.

    python bench/distill.py                        # the README table (~10 min on 2 shared cores)
    python bench/distill.py --steps 800            # longer student runs
    python bench/distill.py --smoke                # a few steps each: checks the plumbing only

1. teacher: gpt_tiny (4 layers x 128, ~0.8M parameters) trained `--teacher-steps` steps with
   objective=causal_lm (reused from <out>/teacher when its last.ckpt is there and --retrain is not set);
2. baseline: the student (2 layers x 48, ~0.06M parameters) with objective=causal_lm;
3. distilled: the same student with objective=distill (0.5 hard + 0.5 soft at T=2, the default),
   on exactly the same batches and steps.

Scores of the final weights, each read back from its last.ckpt (the student's without the teacher):
the evaluate suite's intrinsic score (`lmpretrain.evaluate.intrinsic_scores`: held-out shakespeare,
val/loss and val/ppl over 50 batches), next-character top-1 accuracy on the same held-out blocks, and
the suite's extrinsic score (`lmpretrain.evaluate.extrinsic_scores` with conf/suite/default.yaml's
spam overrides: each checkpoint fine-tuned 150 steps as a ham/spam classifier, same seed and settings,
then scored on the 582-e-mail test split: test/acc and macro F1).
Writes <out>/results.json and prints one Markdown table.

    python bench/distill.py --reuse                # score the students already under <out> again

--family mlm: BERT students instead, distilled from bench/downstream.py's shared-text MLM teacher
(BERT-Tiny 2 x 128 with rotary positions, 2,000 steps; trained first when its checkpoint is missing):
the student (2 x 64, rotary) pretrained `--steps` MLM steps on the same shared corpus with and without
the teacher, then each scored by the evaluate suite's extrinsic score (`extrinsic_scores`: fine-tuned on
debian_section and ner_wnut with bench/downstream.py's steps and lr, then tested); `--seed` (default
1337, the config's) sets the students' and the fine-tunings' seed; scores: the student's own
validation (masked-token accuracy, loss) and the test splits.

    python bench/distill.py --family mlm --steps 1000   # the README's MLM table (~20 min on 2 cores)

`--teacher CKPT --corpus TEXT.jsonl` distills another MLM teacher (e.g. the same recipe trained 8,000
steps) into the same students, which pretrain on TEXT, the teacher's corpus, so that both share its
tokenizer; `--teacher-steps N` (no --teacher) trains the recipe N steps instead, in a folder of its own
(logs/bench_downstream/pretrain_mlm_shared_rotary_N), on the shared corpus; `--tasks
debian_section,ner_wnut,qa_wordnet` picks the scores.

    python bench/distill.py --family mlm --teacher-steps 8000 --steps 1000 --init-from-teacher \
        --tasks debian_section,ner_wnut,qa_wordnet    # the README's DistilBERT-style table (~2 h on 1 core)

--family task: distillation at fine-tuning time (`tasks/distill.py`, the task logits) on `--task`
(debian_section, default, or ner_wnut): a teacher (the shared-text MLM teacher above fine-tuned on the
task `--teacher-steps` steps, default as many as bench/downstream.py fine-tunes it; reused from
<out>/<task>_teacher_<steps> when there) and one BERT student checkpoint (`--student`, default the
`--family mlm` baseline student; trained with that recipe when missing), fine-tuned on the task as
bench/downstream.py does (its steps or `--finetune-steps`, lr 1e-3) with and without the teacher's
logits (0.5 hard + 0.5 soft, T = 2), for each fine-tuning seed of `--seeds`; scores: validation loss,
test accuracy (NER: token accuracy) and macro F1 (NER: entity F1) of each, and their means.

    python bench/distill.py --family task --seeds 1,2,3   # the README's task-distillation table (~10 min)
    python bench/distill.py --family task --task ner_wnut  # the same on NER (~12 min)

--reuse takes the baseline and distilled last.ckpt from a previous run under <out> when they are there
(their training times from <out>/results.json) instead of training them.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import torch

from lmpretrain.checkpoints import read_checkpoint  # noqa: E402
from lmpretrain.config import compose_config  # noqa: E402

BLOCK, BATCH = 32, 16  # 512 tokens a step: what the loaded 2-core CPU this was measured on allows
COMMON = ["experiment=shakespeare_char", "trainer.accelerator=cpu", "logger=csv", f"model.block_size={BLOCK}",
          f"data.batch_size={BATCH}", "model.dropout=0.0", "optimizer.lr=2e-3", "scheduler.warmup_steps=20",
          "trainer.limit_val_batches=20", "callbacks.samples=null", "callbacks.rich_progress_bar=null"]
TEACHER = ["model=gpt_tiny"]  # 4 x 128
STUDENT = ["model=gpt_tiny", "model.n_layer=2", "model.n_embd=48", "model.n_head=4"]
TEST_EXAMPLES = {"spam": 582}  # conf/task/spam.yaml: the test split's size
SUITE = {"files": ["tinyshakespeare.txt"], "split": "tail", "val_fraction": 0.1, "batch_size": 16, "max_batches": 50}


def compose(overrides: list[str], out: Path):
    return compose_config("train", overrides, out)


def fit(name: str, overrides: list[str], steps: int, out: Path) -> tuple[Path, float]:
    from lmpretrain.train import train

    cfg = compose([*COMMON, *overrides, f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}",
                   f"name=bench_distill_{name}"], out / name)
    start = time.perf_counter()
    train(cfg)
    return out / name / "checkpoints" / "last.ckpt", time.perf_counter() - start


@torch.no_grad()
def heldout_scores(ckpt: Path, cache_dir: str, data_dir: str) -> dict[str, float]:
    """The evaluate suite's intrinsic score, plus next-character accuracy on the same blocks."""
    from tokenizers import Tokenizer

    from lmpretrain.checkpoints import load_module
    from lmpretrain.data import PackedTextDataModule
    from lmpretrain.evaluate import EOS_CANDIDATES, intrinsic_scores

    scores = intrinsic_scores(str(ckpt), SUITE, cache_dir, data_dir)
    module = load_module(ckpt).eval()  # the student alone: no teacher is loaded for validation
    tokenizer = Tokenizer.from_str(module.tokenizer_json)
    eos = next((t for t in EOS_CANDIDATES if tokenizer.token_to_id(t) is not None), None)  # as intrinsic_scores
    spec = {k: v for k, v in SUITE.items() if k != "max_batches"}
    datamodule = PackedTextDataModule(tokenizer={"eos_token": eos}, cache_dir=cache_dir, data_dir=data_dir,
                                      block_size=module.network.config.block_size, **spec)
    datamodule.connect(tokenizer=tokenizer)
    datamodule.prepare_data()
    datamodule.setup("validate")
    right = total = 0
    for i, batch in enumerate(datamodule.val_dataloader()):
        if i == SUITE["max_batches"]:
            break
        pred = module.network(batch["input_ids"]).argmax(-1)
        keep = batch["labels"] != -100
        right += int((pred[keep] == batch["labels"][keep]).sum())
        total += int(keep.sum())
    return {"val_loss": scores["val/loss"], "val_ppl": scores["val/ppl"], "next_char_acc": right / total,
            "params": sum(p.numel() for p in module.network.parameters()), "ckpt_mb": ckpt.stat().st_size / 2**20}


def task_scores(ckpt: Path, task: str, overrides: list[str], out: Path) -> dict[str, float]:
    """The evaluate suite's extrinsic score: fine-tune from `ckpt` with the suite's overrides, test split."""
    from lmpretrain.evaluate import extrinsic_scores

    scores = extrinsic_scores(str(ckpt), task, list(overrides), out)
    return {f"{task}/{k}": float(v) for k, v in scores.items() if k.startswith("test/")}


MLM_STUDENT = ["model.n_layer=2", "model.n_embd=64", "model.n_head=2"]
MLM_TASKS = ("debian_section", "ner_wnut")
# the test metrics each --family mlm task reports (keys under test/, and their column names)
TASK_COLUMNS = {"debian_section": (("acc", "f1"), ("acc", "macro F1")),
                "ner_wnut": (("f1", "token_acc"), ("entity F1", "token acc")),
                "qa_wordnet": (("exact_match", "f1"), ("EM", "F1"))}


def mlm_main(args) -> None:
    """--family mlm (see the module docstring)."""
    sys.path.insert(0, str(REPO / "bench"))
    import downstream

    from lmpretrain.train import train

    shared = args.out if args.smoke else REPO / "logs" / "bench_downstream"  # where the teacher is (made)
    shared.mkdir(parents=True, exist_ok=True)
    if args.teacher is None:  # the recipe's 2,000 steps, or --teacher-steps in a folder of their own
        teacher = downstream.pretrain("mlm_shared_rotary", shared, 0.005 if args.smoke else 1.0,
                                      None if args.smoke else args.teacher_steps)
    else:  # a teacher of the same recipe trained longer: the students read the corpus it read (its tokenizer)
        teacher = args.teacher
    common = mlm_common(args, shared, downstream)
    student, arms = MLM_STUDENT, {"baseline": [], "distilled": ["objective=distill", f"objective.teacher={teacher}"]}
    if args.init_from_teacher:  # DistilBERT: the teacher's width, half its blocks, started from its weights
        shape = read_checkpoint(teacher, "--teacher", mmap=True)["hyper_parameters"]["model"]  # its shape only
        student = [f"model.n_layer={max(1, shape['n_layer'] // 2)}", f"model.n_embd={shape['n_embd']}",
                   f"model.n_head={shape['n_head']}"]
        arms = {"baseline": [], "distilled": [*arms["distilled"], "objective.init_from_teacher=true"],
                # the initialisation alone: the teacher's weights, the student's own loss only
                "init_only": [*arms["distilled"], "objective.init_from_teacher=true", "objective.weights.hard=1.0",
                              "objective.weights.soft=0.0"]}
    results = {}
    for name, extra in arms.items():
        start = time.perf_counter()
        metrics = train(compose_config("train", [*common, *student, *extra], args.out / name))
        results[name] = {"train_s": time.perf_counter() - start, "val/loss": metrics["val/loss"],
                         "val/mlm_acc": metrics["val/mlm_acc"]}
        ckpt = args.out / name / "checkpoints" / "last.ckpt"
        for task in args.tasks:  # the evaluate suite's extrinsic score with bench/downstream.py's task settings
            n = downstream.steps(downstream.TASKS[task]["steps"], 0.005 if args.smoke else 1.0)
            overrides = [*suite_overrides(task, n, downstream), f"seed={args.seed}"]
            results[name].update(task_scores(ckpt, task, overrides, args.out / f"{task}_{name}"))
    meta = {"date": date.today().isoformat(), "student_steps": args.steps, "teacher": str(teacher),
            "student": " ".join(student), "machine": f"{platform.machine()}, torch {torch.__version__}",
            "distill": "weights hard 0.5 + soft 0.5, T=2", "seed": args.seed, "corpus": str(corpus_of(args, shared))}
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"\n{meta}\n\n| student | MLM steps | val masked acc | val loss | "
          + " | ".join(f"{task} {' / '.join(TASK_COLUMNS[task][1])}" for task in args.tasks)
          + " | pretrain s |\n|---|---:|---:|---:|" + "---|" * len(args.tasks) + "---:|")
    for name, r in results.items():
        cells = [" / ".join(f"{r.get(f'{task}/test/{k}', float('nan')):.3f}" for k in TASK_COLUMNS[task][0])
                 for task in args.tasks]
        print(f"| {name} | {args.steps} | {r['val/mlm_acc']:.4f} | {r['val/loss']:.4f} | {' | '.join(cells)} | "
              f"{r['train_s']:.0f} |")


# --family task: the task and the distilled module of each (debian_section's 58 classes: soft targets say
# which sections are alike; NER: which tags a word might also carry)
KD_TASKS = {"debian_section": "DistilledClassificationModule", "ner_wnut": "DistilledTokenClassificationModule"}


def task_main(args) -> None:
    """--family task (see the module docstring)."""
    sys.path.insert(0, str(REPO / "bench"))
    import downstream

    from lmpretrain.evaluate import extrinsic_scores

    scale = 0.005 if args.smoke else 1.0
    shared = args.out if args.smoke else REPO / "logs" / "bench_downstream"
    task = args.task
    spec = downstream.TASKS[task]
    teacher_steps = args.teacher_steps or spec["steps"]
    teacher_kind = f"teacher_{teacher_steps}"
    teacher = args.out / f"{task}_{teacher_kind}" / "checkpoints" / "last.ckpt"
    previous = args.out / "results.json"
    previous = json.loads(previous.read_text()).get("results", {}) if previous.is_file() else {}
    results = {"teacher": previous["teacher"]} if "teacher" in previous else {}
    shared.mkdir(parents=True, exist_ok=True)
    pretrained = downstream.pretrain("mlm_shared_rotary", shared, scale)  # also writes the shared corpus
    if args.retrain or not teacher.is_file():
        start = time.perf_counter()
        metrics = downstream.finetune_run(task, pretrained, args.out, scale, teacher_kind, n=teacher_steps)
        results["teacher"] = {"train_s": time.perf_counter() - start,
                              **{k: float(v) for k, v in metrics.items() if k.split("/")[0] in ("val", "test")}}
    student = args.student
    if student is None:  # the --family mlm baseline student (the same recipe, trained here when missing)
        mlm_out = args.out.with_name("bench_distill_mlm") if not args.smoke else args.out
        student = mlm_out / "baseline" / "checkpoints" / "last.ckpt"
        if not student.is_file():
            from lmpretrain.train import train

            train(compose_config("train", [*mlm_common(args, shared, downstream), *MLM_STUDENT], mlm_out / "baseline"))
    n = downstream.steps(args.finetune_steps or spec["steps"], scale)
    task_overrides = suite_overrides(task, n, downstream)
    arms = {"plain": [], "task_distilled": [f"task._target_=lmpretrain.tasks.distill.{KD_TASKS[task]}",
                                            f"+task.teacher={teacher}"]}
    for seed in args.seeds:
        for arm, extra in arms.items():
            start = time.perf_counter()
            scores = extrinsic_scores(str(student), task, [*task_overrides, f"seed={seed}", *extra],
                                      args.out / f"{arm}_seed{seed}")
            results[f"{arm}/seed{seed}"] = {"finetune_s": time.perf_counter() - start,
                                            **{k: float(v) for k, v in scores.items()}}
    meta = {"date": date.today().isoformat(), "task": task, "teacher": str(teacher),
            "teacher_steps": teacher_steps, "student": str(student), "finetune": " ".join(task_overrides),
            "distill": "weights hard 0.5 + soft 0.5, T=2", "seeds": args.seeds,
            "machine": f"{platform.machine()}, torch {torch.__version__}"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    if "teacher" in results:
        t = results["teacher"]
    keys = ("val/loss", "test/acc", "test/f1") if task != "ner_wnut" else ("val/loss", "test/token_acc", "test/f1")
    names = " / ".join(k.replace("/", " ").replace("f1", "F1") for k in keys)
    if "teacher" in results:
        t = results["teacher"]
        print(f"\nteacher ({teacher_steps} steps): " + " / ".join(f"{t[k]:.3f}" for k in keys))
    print(f"\n{meta}\n\n| fine-tuning seed | plain: {names} | task-distilled: {names} |\n|---|---|---|")
    rows = {arm: [[results[f"{arm}/seed{seed}"][k] for k in keys] for seed in args.seeds] for arm in arms}
    for i, seed in enumerate(args.seeds):
        print(f"| {seed} | " + " | ".join(" / ".join(f"{v:.3f}" for v in rows[arm][i]) for arm in arms) + " |")
    means = {arm: [sum(col) / len(col) for col in zip(*rows[arm])] for arm in arms}
    print("| mean | " + " | ".join(" / ".join(f"{v:.3f}" for v in means[arm]) for arm in arms) + " |")


def suite_overrides(task: str, n: int, downstream) -> list[str]:
    """The evaluate suite's fine-tuning of `task` as bench/downstream.py runs it (lr), for `n` steps."""
    return ["trainer.accelerator=cpu", *downstream.task_overrides(task, n)]


def mlm_common(args, shared: Path, downstream) -> list[str]:
    """The BERT students' MLM pretraining overrides (both students; the teacher's corpus and tokenizer)."""
    return [*downstream.MLM_SHARED, "model.position=rotary", f"data.files=[{corpus_of(args, shared)}]",
            *downstream.CPU, f"seed={args.seed}", f"trainer.max_steps={args.steps}",
            f"trainer.val_check_interval={max(1, args.steps // 4)}"]


def corpus_of(args, shared: Path) -> Path:
    """The text the BERT students pretrain on: --corpus, else bench/downstream.py's shared corpus."""
    return args.corpus or shared / "shared_text.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400, help="student steps (both students)")
    parser.add_argument("--teacher-steps", type=int, default=600)
    parser.add_argument("--out", type=Path, default=REPO / "logs" / "bench_distill")
    parser.add_argument("--retrain", action="store_true", help="train the teacher even if <out>/teacher has one")
    parser.add_argument("--reuse", action="store_true",
                        help="take the students' last.ckpt from a previous run under <out> when there")
    parser.add_argument("--smoke", action="store_true", help="4 steps each: the plumbing only")
    parser.add_argument("--seed", type=int, default=1337,
                        help="--family mlm: the students' and fine-tunings' seed (init, masking, data order)")
    parser.add_argument("--family", choices=["gpt", "mlm", "task"], default="gpt",
                        help="gpt: char-level GPT students (the first table); mlm: BERT students; task: "
                             "distillation of a fine-tuned teacher's task logits (see above)")
    parser.add_argument("--student", type=Path, default=None,
                        help="--family task: the student's pretrained .ckpt (default: the --family mlm baseline)")
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 3],
                        help="--family task: the fine-tuning seeds, comma-separated")
    parser.add_argument("--task", choices=sorted(KD_TASKS), default="debian_section",
                        help="--family task: the task (debian_section: sequence classification; ner_wnut: tags)")
    parser.add_argument("--teacher", type=Path, default=None,
                        help="--family mlm: the teacher's .ckpt (default: bench/downstream.py's shared-text MLM, "
                             "2,000 steps); give --corpus too when it read another text")
    parser.add_argument("--corpus", type=Path, default=None,
                        help="--family mlm: the students' pretraining text, the teacher's (a .jsonl with a "
                             "'text' field; default: bench/downstream.py's shared corpus)")
    parser.add_argument("--init-from-teacher", action="store_true",
                        help="--family mlm: students of the teacher's width with half its blocks; the distilled "
                             "one starts from the teacher's weights (DistilBERT), and a third, init_only, starts "
                             "there and trains on its own loss")
    parser.add_argument("--tasks", type=lambda s: s.split(","), default=list(MLM_TASKS),
                        help=f"--family mlm: the tasks that score the students, comma-separated, of "
                             f"{', '.join(TASK_COLUMNS)} (default: {','.join(MLM_TASKS)})")
    parser.add_argument("--finetune-steps", type=int, default=None,
                        help="--family task: the students' fine-tuning steps (default: bench/downstream.py's)")
    args = parser.parse_args()
    args.corpus = args.corpus and args.corpus.resolve()  # data.files resolves a relative path in the data folder
    if unknown := [t for t in args.tasks if t not in TASK_COLUMNS]:
        parser.error(f"--tasks: {', '.join(unknown)} is not one of {', '.join(TASK_COLUMNS)}")
    if args.family != "gpt" and args.out == parser.get_default("out"):
        args.out = args.out.with_name(f"bench_distill_{args.family}")
    if args.family != "gpt" and args.teacher_steps == parser.get_default("teacher_steps"):
        args.teacher_steps = None  # mlm: the shared MLM's 2,000 steps; task: fine-tuned as bench/downstream.py does
    if args.family == "task" and args.task != "debian_section" and args.out.name == "bench_distill_task":
        args.out = args.out.with_name(f"bench_distill_task_{args.task}")
    if args.smoke:
        args.steps, args.teacher_steps, args.seeds, args.out = 4, 6, args.seeds[:1], args.out / "smoke"
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.family == "mlm":
        return mlm_main(args)
    if args.family == "task":
        return task_main(args)

    cfg = compose(COMMON, args.out)
    cache_dir, data_dir = cfg.paths.cache_dir, cfg.paths.data_dir
    teacher = args.out / "teacher" / "checkpoints" / "last.ckpt"
    wall = {}
    if args.retrain or args.smoke or not teacher.is_file():
        teacher, wall["teacher"] = fit("teacher", TEACHER, args.teacher_steps, args.out)
    runs = {"teacher": teacher}
    previous = args.out / "results.json"
    previous = json.loads(previous.read_text()) if args.reuse and previous.is_file() else None
    for name, extra in (("baseline", STUDENT),
                        ("distilled", [*STUDENT, "objective=distill", f"objective.teacher={teacher}"])):
        cached = args.out / name / "checkpoints" / "last.ckpt"
        if args.reuse and not args.smoke and cached.is_file():
            runs[name], wall[name] = cached, (previous or {}).get("results", {}).get(name, {}).get("train_s")
            print(f"{name}: reusing {cached}")
        else:
            runs[name], wall[name] = fit(name, extra, args.steps, args.out)
    if previous and previous.get("meta", {}).get("student_steps") not in (None, args.steps):
        print(f"warning: the reused students ran {previous['meta']['student_steps']} steps, not --steps {args.steps}")

    (task, task_overrides), = cfg.suite.tasks.items()  # conf/suite/default.yaml: spam, 150 steps
    if args.smoke:
        task_overrides = [*task_overrides, "trainer.max_steps=4", "trainer.val_check_interval=4"]
    results = {}
    for name, path in runs.items():
        results[name] = {**heldout_scores(path, cache_dir, data_dir), "train_s": wall.get(name)}
        results[name].update(task_scores(path, task, list(task_overrides), args.out / name / task))
    meta = {"date": date.today().isoformat(), "student_steps": args.steps, "teacher_steps": args.teacher_steps,
            "tokens_per_step": BLOCK * BATCH, "machine": f"{platform.machine()}, {torch.get_num_threads()} threads "
            f"(2 shared CPU cores), torch {torch.__version__}", "distill": "weights hard 0.5 + soft 0.5, T=2",
            "extrinsic": f"{task}: {' '.join(task_overrides)}; test split"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))

    steps = {"teacher": args.teacher_steps, "baseline": args.steps, "distilled": args.steps}
    print(f"\n{meta['date']}; {meta['machine']}; {meta['tokens_per_step']} tokens/step; {meta['distill']}\n")
    acc, f1 = f"{task}/test/acc", f"{task}/test/f1"
    print(f"| model | params | steps | held-out val/loss | val/ppl | next-char acc | {task} test acc | "
          f"{task} test macro F1 | ckpt MB | train s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        train_s = f"{r['train_s']:.0f}" if r["train_s"] else "cached"
        print(f"| {name} | {r['params']:,} | {steps[name]} | {r['val_loss']:.4f} | {r['val_ppl']:.2f} | "
              f"{r['next_char_acc']:.4f} | {r.get(acc, float('nan')):.4f} | {r.get(f1, float('nan')):.4f} | "
              f"{r['ckpt_mb']:.2f} | {train_s} |")
    base, dist = results["baseline"], results["distilled"]
    n_test = TEST_EXAMPLES.get(task)
    print(f"\ndistilled - baseline: val/loss {dist['val_loss'] - base['val_loss']:+.4f}, next-char acc "
          f"{dist['next_char_acc'] - base['next_char_acc']:+.4f}, {task} test acc "
          f"{dist.get(acc, float('nan')) - base.get(acc, float('nan')):+.4f}, macro F1 "
          f"{dist.get(f1, float('nan')) - base.get(f1, float('nan')):+.4f}")
    if n_test and acc in base:  # binomial standard error of one accuracy on n test examples
        se = (base[acc] * (1 - base[acc]) / n_test) ** 0.5
        print(f"{task} test: {n_test} examples, standard error of one accuracy ~{se:.4f} "
              f"(of a difference of two independent ones ~{se * 2 ** 0.5:.4f})")


if __name__ == "__main__":
    main()
