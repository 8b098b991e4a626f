"""Does pretraining pay off? Classic baselines vs from-scratch vs pretrained, every task, one run.

    python bench/downstream.py --encoder-pretrain mlm_shared_rotary --jobs 2   # the README table
    python bench/downstream.py --tasks spam,qa_wordnet --finetune-scale 2   # longer fine-tuning
    python bench/downstream.py --smoke               # a few steps each: checks the plumbing only
    python bench/downstream.py --truncation-study    # TF-IDF on whole vs cut texts (data.truncation)

For each downstream task, on its test split and on the same machine:
  (a) the classic baseline a user reaches for first: TF-IDF (1-2 grams) + LinearSVC for the
      classification tasks; all-O for NER; the first entry's gloss for QA; TF-IDF cosine for
      similarity; copying the source for translation; the description's first 12 words as the
      summary for summarization;
  (b) the task's model trained from scratch (its tokenizer trained on the task's training split);
  (c) the same architecture fine-tuned from a checkpoint this project pretrained on the text in
      ../shared/data: MLM (`experiment=bert_mlm_tiny`) for the encoder tasks, span corruption
      (`experiment=t5_span_tiny`, cased WordPiece) for the seq2seq tasks, both on the Debian
      package descriptions of the training split (labels are never read); translation's span
      corruption reads the training text of every set plus the Spanish verses ("span_shared_es").
Scratch and pretrained runs of a task get the same steps, batch, learning rate and schedule.

Results are appended to `<out>/results.json` as they arrive (a rerun skips what is there; delete
the file to start over) and printed as one Markdown table at the end with the wall time per run.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from lmpretrain.config import compose_config  # noqa: E402
from lmpretrain.paths import data_root  # noqa: E402

CPU = ["trainer.accelerator=cpu", "logger=csv"]

# The pretraining runs the fine-tuned models start from (steps at --scale 1). A run with
# `shared_corpus` reads the corpus `shared_corpus()` writes (the training text of every set; its
# path is filled in by `pretrain`); "es" adds the Spanish side of the translation training split.
MLM_SHARED = ["experiment=bert_mlm_tiny", "data.field=text", "tokenizer.vocab_size=16000"]
MINI = ["model.n_layer=4", "model.n_head=4", "model.n_embd=256"]  # BERT-Mini (Turc et al. 2019): 4 x 256
PRETRAIN = {
    "mlm": {"overrides": ["experiment=bert_mlm_tiny"], "steps": 2000},
    "mlm_shared": {"overrides": MLM_SHARED, "steps": 2000, "shared_corpus": True},
    # the same with rotary positions, for extractive QA (see TASKS)
    "mlm_shared_rotary": {"overrides": [*MLM_SHARED, "model.position=rotary"], "steps": 2000, "shared_corpus": True},
    # the same recipe for a wider, deeper encoder (BERT-Mini's shape): ~3x the compute per step, so its
    # 2,000 steps cost about what 6,000 of BERT-Tiny do; the scratch runs it is compared with get its shape
    "mlm_shared_rotary_mini": {"overrides": [*MLM_SHARED, "model.position=rotary", *MINI], "steps": 2000,
                               "shared_corpus": True},
    # ELECTRA's replaced-token detection on the same corpus, tokenizer, shape and steps as mlm_shared_rotary:
    # the discriminator learns from every token where MLM learns from 15% (objectives/electra.py)
    "electra_shared_rotary": {"overrides": ["experiment=electra_tiny", "data.field=text", "tokenizer.vocab_size=16000",
                                            "model.position=rotary"], "steps": 2000, "shared_corpus": True},
    # the same with a generator as wide as the network: it leaves the unigram plateau sooner (README "ELECTRA")
    "electra_shared_rotary_gen1": {"overrides": ["experiment=electra_tiny", "data.field=text",
                                                 "tokenizer.vocab_size=16000", "model.position=rotary",
                                                 "objective.generator.size=1.0"], "steps": 2000, "shared_corpus": True},
    "span": {"overrides": ["experiment=t5_span_tiny", "tokenizer.lowercase=false"], "steps": 500},
    # translation: the Debian span model's English WordPiece cuts Spanish into pieces and its decoder
    # never read a Spanish sentence; this one reads both languages (monolingual text, as mBART's
    # pretraining does: no verse is paired with its translation) with a 16k cased WordPiece.
    "span_shared_es": {"overrides": ["experiment=t5_span_tiny", "tokenizer.lowercase=false", "data.field=text",
                                     "tokenizer.vocab_size=16000", "data.split=hash"], "steps": 500,
                       "shared_corpus": "es"},
}

# Per task: the pretraining it starts from, steps at --finetune-scale 1, fine-tuning overrides shared by the
# scratch and pretrained runs (and `pretrained_overrides` for the pretrained run only), the test metrics
# shown (the first is the headline), the baseline, and `folds` (k-fold by document: the row is the mean).
TASKS = {
    "spam": dict(pretrain="mlm", steps=300, overrides=["optimizer.lr=1e-3"],
                 metrics=["test/acc", "test/f1"], baseline="tfidf_svc"),
    # lr 3e-3: the best validation accuracy of 3e-4 / 1e-3 / 3e-3 for both arms (README)
    "debian_section": dict(pretrain="mlm", steps=500, overrides=["optimizer.lr=3e-3"],
                           metrics=["test/acc", "test/f1"], baseline="tfidf_svc"),
    # NER: at 300 steps the arms swing with the seed (3-seed test F1 0.228 scratch, 0.201 pretrained);
    # at 1,000 the pretrained arm pulls ahead on every seed (README).
    # The pretrained arm trains its new tag head alone for 200 steps first (LP-FT, optimizer.head_only_steps):
    # validation F1 0.263 vs 0.212 without over seeds 1-3, ahead on each seed, and token accuracy above
    # all-O's on each (README). From scratch there is no body worth keeping.
    "ner_wnut": dict(pretrain="mlm", steps=1000, overrides=["optimizer.lr=1e-3"],
                     pretrained_overrides=["optimizer.head_only_steps=200"],
                     metrics=["test/f1", "test/token_acc"], baseline="all_o"),
    # QA: with learned absolute positions BERT-Tiny sat at EM 0.017 for 1,440 steps (loss 2.9 -> 2.8);
    # rotary positions make "the token after `):`" and "the entry whose head word the question
    # names" relative patterns, and the loss falls at once. Both arms use rotary positions. The preset's
    # exact-match flags (data.match_features) are what let the model find the asked-for entry.
    # 1,000 steps: the pretrained arm is at validation EM 0.93 after 666 (0.95 after 2,000), and the
    # table fits in about an hour.
    "qa_wordnet": dict(pretrain="mlm_shared_rotary", steps=1000,
                       overrides=["optimizer.lr=1e-3", "data.batch_size=16", "model.position=rotary"],
                       metrics=["test/exact_match", "test/f1"], baseline="first_entry"),
    # 4 folds by document (data.fold): one split's 45 test pairs left the arms' order to chance (README);
    # the row is the mean over folds, so all 180 within-fold test pairs count, as for the baseline.
    "similarity_lee": dict(pretrain="mlm", steps=100, overrides=["optimizer.lr=1e-3", "scheduler.warmup_steps=20"],
                           metrics=["test/spearman", "test/pearson"], baseline="tfidf_cosine", folds=4),
    "translation_en_es": dict(pretrain="span_shared_es", steps=300, overrides=["optimizer.lr=1e-3", "task.max_eval_batches=8"],
                              metrics=["test/sacrebleu", "test/chrf"], baseline="copy_source"),
    # The preset's copy head and beam search (README "Summaries: a copy head") need ~2,000 steps.
    "debian_summary": dict(pretrain="span", steps=2000, overrides=["optimizer.lr=1e-3", "task.max_eval_batches=8"],
                           metrics=["test/rougeL", "test/sacrebleu"], baseline="lead_12_words"),
}

# Seconds of one run at `--jobs 2` on the 2-core machine (2026-12-03, step scale 1): only the order in
# which `--jobs` starts the runs depends on them. One thread per run is slower than two for one run
# (QA 647 s vs 435 at 2,000 steps, translation 538 vs 270), but two at once finish the table 1.85x
# sooner. QA's 480 s are an estimate for its 1,000 steps, and so are BERT-Mini's 2,700 (its pretraining took
# 1,730 s alone on two threads, 2026-12-05; one thread beside another run is slower).
SECONDS = {"baseline": 30, "spam": 110, "debian_section": 220, "ner_wnut": 135, "qa_wordnet": 480,
           "similarity_lee": 144, "translation_en_es": 540, "debian_summary": 1320,
           "mlm": 1215, "mlm_shared": 1215, "mlm_shared_rotary": 1215,
           "mlm_shared_rotary_mini": 2700, "electra_shared_rotary": 1300,
           "electra_shared_rotary_gen1": 1800, "span": 330, "span_shared_es": 450}

# ---------------------------------------------------------------- (a) classic baselines

def read_jsonl(name: str) -> list[dict]:
    path = data_root() / name
    with (gzip.open(path, "rt", encoding="utf-8") if name.endswith(".gz") else open(path, encoding="utf-8")) as f:
        return [json.loads(line) for line in f if line.strip()]


def tfidf_svc(train: str, test: str, text: str, label: str, cut=None) -> dict[str, float]:
    """TF-IDF (1-2 grams) + LinearSVC; `cut` (text -> text) shortens every text first."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.svm import LinearSVC

    cut = cut or (lambda t: t)
    tr, te = read_jsonl(train), read_jsonl(test)
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
    x = vec.fit_transform([cut(r[text]) for r in tr])
    clf = LinearSVC().fit(x, [r[label] for r in tr])
    pred, gold = clf.predict(vec.transform([cut(r[text]) for r in te])), [r[label] for r in te]
    return {"test/acc": accuracy_score(gold, pred), "test/f1": f1_score(gold, pred, average="macro")}


CLASSIFICATION_FILES = {"spam": ("spam.train.jsonl.gz", "spam.test.jsonl.gz", "text", "label"),
                        "debian_section": ("debian_packages.train.jsonl.gz", "debian_packages.test.jsonl.gz",
                                           "description", "section")}


def truncation_study(words: tuple[int, ...] = (80, 160)) -> None:
    """Which part of a long text carries the label? The TF-IDF baseline on whole texts against the same
    texts cut to `n` words the way `data.truncation` cuts tokens (head, tail, head_tail: a quarter from
    the start and the rest from the end). A fine-tuned model sees 126 tokens of a text, ~80-100 words."""
    from lmpretrain.data.labeled import truncate

    print("| task | whole text | " + " | ".join(f"{how} {n} words" for n in words for how in ("head", "tail", "head_tail"))
          + " |", flush=True)
    for task, files in CLASSIFICATION_FILES.items():
        cells = [tfidf_svc(*files)]
        for n in words:
            for how in ("head", "tail", "head_tail"):
                cells.append(tfidf_svc(*files, cut=lambda t, n=n, how=how: " ".join(truncate(t.split(), n, how))))
        print(f"| {task} | " + " | ".join(f"{c['test/acc']:.3f} / {c['test/f1']:.3f}" for c in cells) + " |", flush=True)


def baseline(task: str) -> dict[str, float]:
    if task in CLASSIFICATION_FILES:
        return tfidf_svc(*CLASSIFICATION_FILES[task])
    if task == "ner_wnut":  # every word tagged O: token accuracy = the share of O tags, no entity found
        tags = [line.split()[-1] for line in (data_root() / "ner_wnut.test.conll").read_text().splitlines()
                if line.strip()]
        return {"test/f1": 0.0, "test/token_acc": sum(t == "O" for t in tags) / len(tags)}
    if task == "qa_wordnet":  # answer with the first entry's gloss
        from lmpretrain.metrics import SquadMetrics

        metric = SquadMetrics()
        records = read_jsonl("qa_wordnet.test.jsonl.gz")
        first = [re.match(r"^.*? \((?:noun|verb|adjective|adverb)\): (.*?)(?:; \".*)?$",
                          r["context"].split("\n")[0]).group(1) for r in records]
        metric.update(first, [r["answers"]["text"] for r in records])
        return {f"test/{k}": float(v) for k, v in metric.compute().items()}
    if task == "similarity_lee":  # TF-IDF cosine on the test pairs of each fold of the by-document split
        import numpy as np
        from scipy.stats import pearsonr, spearmanr
        from sklearn.feature_extraction.text import TfidfVectorizer

        from lmpretrain.data.corpus import split_by_hash

        records, folds = read_jsonl("similarity_lee.jsonl"), TASKS[task]["folds"]
        scores = []
        for fold in range(folds):  # as data.fold=k splits
            split = {t: split_by_hash(t, 0.25, 0.25, fold) for r in records for t in (r["text_a"], r["text_b"])}
            test = [r for r in records if split[r["text_a"]] == split[r["text_b"]] == "test"]
            vec = TfidfVectorizer().fit(sorted(d for d, s in split.items() if s == "train"))  # training docs only
            a, b = vec.transform([r["text_a"] for r in test]), vec.transform([r["text_b"] for r in test])
            cos, gold = np.asarray(a.multiply(b).sum(1)).ravel(), [r["score"] for r in test]
            scores.append({"test/spearman": float(spearmanr(cos, gold)[0]), "test/pearson": float(pearsonr(cos, gold)[0])})
        return fold_means(scores, TASKS[task]["metrics"])
    if task in ("translation_en_es", "debian_summary"):
        from lmpretrain.metrics import GenerationMetrics

        if task == "translation_en_es":
            records = read_jsonl("translation_en_es.test.jsonl.gz")
            preds, refs = [r["en"] for r in records], [r["es"] for r in records]
        else:
            records = read_jsonl("debian_packages.test.jsonl.gz")
            preds, refs = [" ".join(r["description"].split()[:12]) for r in records], [r["summary"] for r in records]
        metric = GenerationMetrics(["sacrebleu", "chrf", "rouge"])
        metric.update(preds, refs)
        return {f"test/{k}": float(v) for k, v in metric.compute().items()}
    raise KeyError(task)


# ---------------------------------------------------------------- (b), (c) lmpretrain runs



def steps(n: int, scale: float) -> int:
    return max(2, int(round(n * scale)))


def shared_corpus(path: Path, min_share: float = 0.02, spanish: bool = False) -> dict[str, int]:
    """Write the training text of every set in ../shared/data to `path` (jsonl, field `text`, one
    document per line) for "mlm_shared": Debian descriptions, spam e-mails, the WNUT tweets (tokens
    joined), the QA contexts, the English Bible verses, the ChatterBot prompts and responses, tiny
    shakespeare. Only training splits: dialogue is cut as its preset cuts it (by the prompt's hash
    0.1 / 0.1), so no val/test text of any task is read. No Lee document: each is a test document
    in one of similarity_lee's 4 folds. `spanish` adds the Spanish verses of the translation training
    split (read as monolingual text: the corpus never pairs a verse with its translation). A source
    under `min_share` of the characters is repeated up to that share (the tweets would be 0.6%
    otherwise), so the tokenizer and the model see each domain.
    Returns the characters written per source."""
    from lmpretrain.data.corpus import split_by_hash
    from lmpretrain.data.readers import read_conll

    sources: dict[str, list[str]] = {
        "debian": [r["description"] for r in read_jsonl("debian_packages.train.jsonl.gz")],
        "spam": [r["text"] for r in read_jsonl("spam.train.jsonl.gz")],
        "qa": sorted({r["context"] for r in read_jsonl("qa_wordnet.train.jsonl.gz")}),
        "bible_en": [r["en"] for r in read_jsonl("translation_en_es.train.jsonl.gz")],
        "dialogue": [f"{r['prompt']}\n{r['response']}" for r in read_jsonl("dialogue_chatterbot.jsonl")
                     if split_by_hash(r["prompt"], 0.1, 0.1) == "train"],
        "shakespeare": [p for p in (data_root() / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n\n")
                        if p.strip()],
        "tweets": [" ".join(s["tokens"]) for _, s in read_conll(data_root() / "ner_wnut.train.conll")],
    }
    if spanish:
        sources["bible_es"] = [r["es"] for r in read_jsonl("translation_en_es.train.jsonl.gz")]
    chars = {k: sum(map(len, v)) for k, v in sources.items()}
    total = sum(chars.values())
    written = {}
    with open(path, "w", encoding="utf-8") as f:
        for name, docs in sources.items():
            repeats = max(1, round(min_share * total / chars[name]))
            for _ in range(repeats):
                for d in docs:
                    f.write(json.dumps({"text": d}) + "\n")
            written[name] = repeats * chars[name]
    return written


def pretrain_ckpt(name: str, out: Path, n_steps: int | None = None) -> Path:
    folder = f"pretrain_{name}" if n_steps is None else f"pretrain_{name}_{n_steps}"
    return out / folder / "checkpoints" / "last.ckpt"


def pretrain(name: str, out: Path, scale: float, n_steps: int | None = None) -> Path:
    """The checkpoint of pretraining `name` (trained first when missing): its steps times `scale`, or
    `n_steps` exactly, in a folder of its own (a longer run of the same recipe, e.g. a distillation teacher)."""
    from lmpretrain.checkpoints import read_checkpoint
    from lmpretrain.train import train

    spec, ckpt = PRETRAIN[name], pretrain_ckpt(name, out, n_steps)
    n = n_steps or steps(spec["steps"], scale)
    # A run killed part-way leaves a last.ckpt short of n steps: resume it (weights, optimizer, data
    # position) instead of fine-tuning from a half-trained network.
    done = read_checkpoint(ckpt, "pretrain", mmap=True).get("global_step", 0) if ckpt.is_file() else None
    if done is None or done < n:
        extra = [] if done is None else [f"ckpt_path={ckpt}"]
        if done is not None:
            print(f"[downstream] {ckpt} stopped at step {done} of {n}: resuming it", flush=True)
        if spec.get("shared_corpus"):
            spanish = spec["shared_corpus"] == "es"
            corpus = out / ("shared_text_es.jsonl" if spanish else "shared_text.jsonl")
            print(f"[downstream] shared corpus (chars per source): {shared_corpus(corpus, spanish=spanish)}",
                  flush=True)
            extra.append(f"data.files=[{corpus}]")
        train(compose_config("train", [*spec["overrides"], *extra, *CPU, f"trainer.max_steps={n}",
                                f"trainer.val_check_interval={max(1, n // 4)}"], ckpt.parents[1]))
    return ckpt


def task_overrides(task: str, n: int, extra: list[str] = ()) -> list[str]:
    """The fine-tuning of `task` as the table runs it (its settings in TASKS) for `n` steps, validated 3 times."""
    return [f"task={task}", *TASKS[task]["overrides"], *extra, f"trainer.max_steps={n}",
            f"trainer.val_check_interval={max(1, n // 3)}"]


def fold_means(runs: list[dict[str, float]], shown: list[str]) -> dict[str, float]:
    """The mean of each metric over the folds' runs, and each fold's `shown` metrics as <metric>_fold<k>."""
    means = {key: sum(float(r[key]) for r in runs) / len(runs) for key in runs[0]}
    return means | {f"{m}_fold{k}": float(r[m]) for k, r in enumerate(runs) for m in shown}


def finetune_run(task: str, ckpt: Path | None, out: Path, scale: float, kind: str,
                 extra: list[str] = (), n: int | None = None) -> dict[str, float]:
    """Fine-tune `task` (from `ckpt`, or from scratch) into <out>/<task>_<kind>: the task's steps times
    `scale`, or `n` steps. A task with `folds` runs once per fold (<out>/<task>_<kind>/fold<k>) and
    returns the means over folds."""
    from lmpretrain.finetune import finetune

    overrides = [*CPU, *task_overrides(task, n or steps(TASKS[task]["steps"], scale), extra)]
    if ckpt is not None:  # and what only a pretrained network has a use for (LP-FT: its body is worth keeping)
        overrides += [f"pretrained={ckpt}", *TASKS[task].get("pretrained_overrides", [])]
    folds = TASKS[task].get("folds", 1)
    if folds == 1:
        return finetune(compose_config("finetune", overrides, out / f"{task}_{kind}"))
    runs = [finetune(compose_config("finetune", [*overrides, f"data.fold={k}"], out / f"{task}_{kind}" / f"fold{k}"))
            for k in range(folds)]
    return fold_means(runs, TASKS[task]["metrics"])


def seeded(kind: str, seed: int | None) -> str:
    return kind if seed is None else f"{kind}@seed{seed}"


def folder_kind(kind: str) -> str:
    """A run's folder name from its kind: `scratch@seed1` -> `scratch_seed1`."""
    return kind.replace("@", "_")


class Plan:
    """Every run of the table as a job: `key` (its results.json key) -> what it runs and the jobs it
    waits for. The same plan runs in this process one job after another (`--jobs 1`), or as
    `--jobs N` worker processes of `python bench/downstream.py --job KEY` (see `run_jobs`)."""

    def __init__(self, args: argparse.Namespace, tasks: list[str]):
        self.args = args
        self.scale = 0.005 if args.smoke else args.scale
        self.ft_scale = 0.005 if args.smoke else args.finetune_scale
        self.jobs = self.plan(tasks)

    def pretrain_of(self, task: str) -> str:
        name = TASKS[task]["pretrain"]
        return self.args.encoder_pretrain if name == "mlm" else name

    def pretrained_kind(self, task: str) -> str:  # the Debian-MLM runs keep their old name
        name = self.pretrain_of(task)
        return "pretrained" if name in ("mlm", "span") else f"pretrained_{name}"

    def scratch_shape(self, task: str) -> dict[str, list[str]]:
        """What a scratch run shares with the encoder it is compared with, by name: rotary positions,
        BERT-Mini's shape. Empty for tasks that do not start from `--encoder-pretrain`."""
        name = self.args.encoder_pretrain
        if TASKS[task]["pretrain"] != "mlm":
            return {}
        return {k: v for k, v in (("rotary", ["model.position=rotary"]), ("mini", MINI)) if k in name.split("_")}

    def scratch_kind(self, task: str) -> str:
        return "_".join(["scratch", *self.scratch_shape(task)])

    def plan(self, tasks: list[str]) -> dict[str, tuple[tuple[str, ...], object]]:
        """key -> (the keys it waits for, a function returning its metrics), in the sequential order:
        per task its baseline, scratch run, pretraining (when first needed: the encoder tasks do not
        wait for T5) and pretrained run."""
        out, jobs = self.args.out, {}
        for task in tasks:
            name = self.pretrain_of(task)
            jobs[f"{task}/baseline"] = ((), lambda task=task: baseline(task))
            jobs.setdefault(f"pretrain/{name}", ((), lambda name=name: {
                "steps": steps(PRETRAIN[name]["steps"], self.scale),
                "ok": float(pretrain(name, out, self.scale).is_file())}))
            for seed in self.seeds:
                scratch, pretrained = seeded(self.scratch_kind(task), seed), seeded(self.pretrained_kind(task), seed)
                extra = [o for overrides in self.scratch_shape(task).values() for o in overrides]
                extra += [] if seed is None else [f"seed={seed}"]
                jobs[f"{task}/{scratch}"] = ((), lambda task=task, extra=extra, kind=scratch: finetune_run(
                    task, None, out, self.ft_scale, folder_kind(kind), extra))
                seed_extra = [] if seed is None else [f"seed={seed}"]
                jobs[f"{task}/{pretrained}"] = ((f"pretrain/{name}",), lambda task=task, name=name, kind=pretrained,
                                                seed_extra=seed_extra: finetune_run(
                    task, pretrain(name, out, self.scale), out, self.ft_scale, folder_kind(kind), seed_extra))
        return jobs

    @property
    def seeds(self) -> list[int | None]:
        """`--seeds 1,2,3`: every fine-tuning once per seed (keys `<task>/<kind>@seed<S>`); None: the
        configs' own seed, keys without a suffix (the table's runs)."""
        given = getattr(self.args, "seeds", None)
        return [int(s) for s in given.split(",")] if given else [None]

    def seconds(self, key: str) -> float:
        """About how long the run takes at `--jobs 2` on 2 cores (SECONDS, times the step scale)."""
        group, _, kind = key.partition("/")
        if group == "pretrain":
            return SECONDS[kind] * self.scale
        return SECONDS["baseline"] if kind == "baseline" else SECONDS[group] * self.ft_scale

    def priority(self, key: str) -> float:
        """Which ready run a free worker takes first: the one with the longest chain of work still behind
        it (its own seconds plus those of the longest run that waits for it), so a pretraining starts
        before the runs that wait for it and the long fine-tunings do not end up last."""
        waiting = [k for k, (deps, _) in self.jobs.items() if key in deps]
        return -(self.seconds(key) + max(map(self.seconds, waiting), default=0.0))

    def worker_command(self, key: str) -> list[str]:
        a = self.args
        cmd = [sys.executable, str(Path(__file__).resolve()), "--job", key, "--out", str(a.out), "--scale",
               str(a.scale), "--finetune-scale", str(a.finetune_scale), "--encoder-pretrain", a.encoder_pretrain]
        cmd += ["--seeds", a.seeds] if getattr(a, "seeds", None) else []
        return cmd + (["--smoke"] if a.smoke else [])


def timed(fn) -> dict:
    """Run one job: its metrics as floats and its seconds, as results.json keeps them."""
    start = time.perf_counter()
    metrics = fn()
    return {"metrics": {k: float(v) for k, v in metrics.items()}, "seconds": time.perf_counter() - start}


def job_file(out: Path, key: str, suffix: str) -> Path:
    return out / "jobs" / (key.replace("/", "__") + suffix)


def run_jobs(jobs: dict[str, tuple[tuple[str, ...], object]], done: set[str], workers: int, command, out: Path,
             priority, threads: int, on_result) -> list[str]:
    """Run `jobs` (key -> (deps, _)) not in `done` as at most `workers` processes at once, each
    `command(key)` with `threads` CPU threads (OMP_NUM_THREADS), its output in <out>/jobs/<key>.log and
    its result in <out>/jobs/<key>.json; `on_result(key, result)` records each as it arrives. A job
    starts when every job it waits for has succeeded, the ready one with the lowest `priority(key)`
    first. A failed job (non-zero exit) fails the jobs that wait for it; the others still run.
    Returns the failed keys."""
    import os
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    pending, running, failed = {k: d for k, (d, _) in jobs.items() if k not in done}, {}, []
    (out / "jobs").mkdir(parents=True, exist_ok=True)
    try:
        while pending or running:
            for key in [k for k, deps in pending.items() if any(d in failed for d in deps)]:
                print(f"[downstream] {key}: skipped, it waits for a failed job", flush=True)
                failed.append(key)
                del pending[key]
            ready = sorted((k for k, deps in pending.items() if all(d in done for d in deps)), key=priority)
            for key in ready[:max(0, workers - len(running))]:
                del pending[key]
                job_file(out, key, ".json").unlink(missing_ok=True)  # the job's own result file, from an earlier try
                with open(job_file(out, key, ".log"), "w") as log:
                    running[key] = subprocess.Popen(command(key), stdout=log, stderr=subprocess.STDOUT, env=env)
                print(f"[downstream] {key}: started (log {job_file(out, key, '.log')})", flush=True)
            if not running:
                if pending:  # nothing runs and nothing can start: a dependency is not in the plan
                    failed += sorted(pending)
                    print(f"[downstream] cannot start {sorted(pending)}: what they wait for is not planned", flush=True)
                break
            time.sleep(0.5)
            for key, proc in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[key]
                result = job_file(out, key, ".json")
                if proc.returncode == 0 and result.is_file():
                    done.add(key)
                    on_result(key, json.loads(result.read_text()))
                else:
                    failed.append(key)
                    tail = job_file(out, key, ".log").read_text(errors="replace").splitlines()[-5:]
                    print(f"[downstream] {key}: failed (exit {proc.returncode}); the end of its log:\n  "
                          + "\n  ".join(tail), flush=True)
    finally:
        for proc in running.values():  # interrupted: no worker outlives the scheduler
            proc.terminate()
    return failed


def main() -> None:
    import os

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated, from: " + ", ".join(TASKS))
    p.add_argument("--scale", type=float, default=1.0, help="multiplies every pretraining step budget")
    p.add_argument("--finetune-scale", type=float, default=1.0, help="multiplies every fine-tuning step budget")
    p.add_argument("--smoke", action="store_true", help="a few steps each (plumbing check, scale 0.005)")
    p.add_argument("--encoder-pretrain", default="mlm", choices=["mlm", "mlm_shared", "mlm_shared_rotary",
                                                                  "mlm_shared_rotary_mini", "electra_shared_rotary",
                                                                  "electra_shared_rotary_gen1"],
                   help="what the encoder tasks start from: mlm (Debian descriptions), mlm_shared (the training "
                        "text of every set, 16k WordPiece), the same with rotary positions, where the scratch "
                        "runs get rotary positions too, or that with BERT-Mini's 4 x 256 (scratch too), or ELECTRA's "
                        "replaced-token detection in mlm_shared_rotary's place; results other than mlm's are kept apart")
    p.add_argument("--seeds", help="comma-separated: fine-tune every scratch and pretrained run once per seed "
                                   "(one pretraining); the table shows the mean and each seed's value")
    p.add_argument("--out", type=Path, default=REPO / "logs" / "bench_downstream")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at once, each a worker process with cpu_count / jobs threads (2 on 2 cores: these "
                        "small models use one core each better than two for one run)")
    p.add_argument("--job", help=argparse.SUPPRESS)  # a worker of --jobs: run this one key, write its result
    p.add_argument("--truncation-study", action="store_true",
                   help="only print the TF-IDF baseline on whole vs cut texts (which part carries the label)")
    args = p.parse_args()
    if args.truncation_study:
        truncation_study()
        return
    if args.jobs < 1:
        sys.exit(f"error: --jobs {args.jobs} must be at least 1")
    args.out = args.out.resolve()  # the workers and the corpus paths in overrides must not depend on the cwd
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        sys.exit(f"error: unknown task(s) {unknown}; pick from {list(TASKS)}")
    if args.job:  # a worker: the plan of every task has the key
        from lmpretrain.atomic import atomic_write_json

        atomic_write_json(job_file(args.out, args.job, ".json"), timed(Plan(args, list(TASKS)).jobs[args.job][1]))
        return
    plan = Plan(args, tasks)
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}

    def on_result(key: str, result: dict) -> None:
        results[key] = result
        results_path.write_text(json.dumps(results, indent=2) + "\n")
        print(f"[downstream] {key}: {result['seconds']:.0f} s", flush=True)

    began = time.perf_counter()
    if args.jobs == 1:
        for key, (_, fn) in plan.jobs.items():
            if key not in results:
                on_result(key, timed(fn))
    else:
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
        # a pretraining whose checkpoint is gone runs again before what waits for it (one process trains it)
        done = {k for k in results if not k.startswith("pretrain/")
                or pretrain_ckpt(k.split("/", 1)[1], args.out).is_file()}
        failed = run_jobs(plan.jobs, done, args.jobs, plan.worker_command, args.out, plan.priority, threads,
                          on_result)
        if failed:
            sys.exit(f"error: {len(failed)} run(s) failed: {', '.join(failed)}; their logs are in {args.out / 'jobs'}; "
                     "a rerun of the same command does only what is missing")
    wall = time.perf_counter() - began

    print(f"\nfine-tuning steps per task (scale {plan.ft_scale}): "
          + ", ".join(f"{t} {steps(TASKS[t]['steps'], plan.ft_scale)}" for t in tasks))
    print("\n| task | metric | baseline | scratch | pretrained | pretrained / scratch | s (scratch / pretrained) |")
    print("|---|---|---|---|---|---|---|")
    for task in tasks:
        for metric in TASKS[task]["metrics"]:
            base = results[f"{task}/baseline"]["metrics"].get(metric, float("nan"))
            arms = [[results[f"{task}/{seeded(kind, seed)}"] for seed in plan.seeds]
                    for kind in (plan.scratch_kind(task), plan.pretrained_kind(task))]
            means = [sum(r["metrics"].get(metric, float("nan")) for r in runs) / len(runs) for runs in arms]
            cells = [f"{m:.3f}" + ("" if len(runs) == 1 else " (" + " / ".join(
                f"{r['metrics'].get(metric, float('nan')):.3f}" for r in runs) + ")") for m, runs in zip(means, arms)]
            ratio = means[1] / means[0] if means[0] else float("inf")
            secs = " / ".join(f"{sum(r['seconds'] for r in runs) / len(runs):.0f}" for runs in arms)
            print(f"| {task} | {metric} | {base:.3f} | {cells[0]} | {cells[1]} | {ratio:.2f} | {secs} |")
    for name in sorted({plan.pretrain_of(t) for t in tasks}):
        print(f"pretraining {name}: {results[f'pretrain/{name}']['seconds']:.0f} s")
    print(f"this invocation: {wall:.0f} s of wall time with --jobs {args.jobs} (runs already in results.json "
          "are not rerun)")


if __name__ == "__main__":
    main()
