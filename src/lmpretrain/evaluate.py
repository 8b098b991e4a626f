"""`python -m lmpretrain.evaluate checkpoints='[a.ckpt,b.ckpt]' [suite=...]`: score checkpoints on a suite.

For each checkpoint: intrinsic scores (the checkpoint's own validation metrics, e.g. val/loss and
val/ppl of a causal LM or val/mlm_acc of an encoder, on held-out text read with the checkpoint's
tokenizer) and extrinsic scores (each task of the suite fine-tuned briefly from the checkpoint,
then its test split). `scratch` stands for the task models trained from scratch, the baseline a
pretrained checkpoint must beat. Writes `report.json`, `report.md` (one table) and `plots/` (one
bar chart per score) into the run folder; `evaluate(cfg)` returns {checkpoint: {score: value}}.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import lightning as L
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf
from tokenizers import Tokenizer

from lmpretrain import run, startup
from lmpretrain.atomic import atomic_write, atomic_write_json
from lmpretrain.checkpoints import load_module
from lmpretrain.config import CONF_DIR, to_dict
from lmpretrain.data import PackedTextDataModule
from lmpretrain.errors import ConfigError, exit_on_user_error

log = logging.getLogger(__name__)

SCRATCH = "scratch"
EOS_CANDIDATES = ("<|endoftext|>", "[SEP]", "</s>")  # the end-of-document tokens of conf/tokenizer/


def intrinsic_scores(ckpt: str, spec: dict, cache_dir: str, data_dir: str) -> dict[str, float]:
    """The checkpoint's validation metrics on the validation split of the text `spec` describes."""
    module = load_module(ckpt, "checkpoints")
    if module.tokenizer_json is None:
        raise ConfigError(f"checkpoints: {ckpt} holds no tokenizer; it was not written by lmpretrain")
    tokenizer = Tokenizer.from_str(module.tokenizer_json)
    spec = dict(spec)
    max_batches = spec.pop("max_batches", None)
    eos = next((t for t in EOS_CANDIDATES if tokenizer.token_to_id(t) is not None), None)
    spec.setdefault("block_size", module.network.config.block_size)
    datamodule = PackedTextDataModule(tokenizer={"eos_token": eos}, cache_dir=cache_dir, data_dir=data_dir, **spec)
    datamodule.connect(tokenizer=tokenizer)
    trainer = L.Trainer(accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=max_batches)
    (metrics,) = trainer.validate(module, datamodule=datamodule, verbose=False)
    return {k: float(v) for k, v in metrics.items()}


def extrinsic_scores(ckpt: str, task: str, overrides: list[str], output_dir: Path) -> dict[str, float]:
    """Fine-tune from `ckpt` (or from scratch) with the task's overrides, then score the test split."""
    pretrained = "null" if ckpt == SCRATCH else ckpt
    overrides = [*overrides, f"pretrained={pretrained}", "logger=csv", f"paths.output_dir={output_dir}",
                 "callbacks.rich_progress_bar=null"]
    if GlobalHydra.instance().is_initialized():  # under @hydra.main: the same config folder
        cfg = compose("finetune", overrides=overrides)
    else:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("finetune", overrides=overrides)
    metrics = run.fit_run(cfg, run.build_run(cfg, "task"), test=True)
    return {k: v for k, v in metrics.items() if k.startswith(("test/", "val/"))}


def score_checkpoint(ckpt: str, suite: dict, output_dir: Path, cache_dir: str, data_dir: str) -> dict[str, float]:
    """Every score of the suite for one checkpoint (or `scratch`): `<corpus>/val/...`, `<task>/test/...`."""
    row: dict[str, float] = {}
    if ckpt != SCRATCH:
        for name, spec in (suite.get("intrinsic") or {}).items():
            scores = intrinsic_scores(ckpt, spec, cache_dir, data_dir)
            row.update({f"{name}/{k}": v for k, v in scores.items()})
    for task, overrides in (suite.get("tasks") or {}).items():
        scores = extrinsic_scores(ckpt, task, list(overrides), output_dir / task)
        row.update({f"{task}/{k}": v for k, v in scores.items()})
    return row


def evaluate(cfg: DictConfig) -> dict[str, dict[str, float]]:
    checkpoints = [str(c) for c in (cfg.checkpoints if OmegaConf.is_list(cfg.checkpoints) else [cfg.checkpoints])]
    suite, out = to_dict(cfg.suite), Path(cfg.paths.output_dir)
    results: dict[str, dict[str, float]] = {}
    for ckpt in checkpoints:
        label = SCRATCH if ckpt == SCRATCH else checkpoint_label(ckpt)
        results[label] = score_checkpoint(ckpt, suite, out / "runs" / label, cfg.paths.cache_dir, cfg.paths.data_dir)
        log.info("%s: %s", label, {k: round(v, 4) for k, v in results[label].items()})
    write_report(results, out)
    return results


def checkpoint_label(path: str) -> str:
    """A short, unique-enough name: the run folder and file (`<date>/<time>/last`)."""
    p = Path(path)
    parts = [x for x in (p.parent.parent.parent.name, p.parent.parent.name, p.stem) if x]
    return "/".join(parts)


def write_report(results: dict[str, dict[str, float]], out: Path) -> None:
    """report.json, report.md (checkpoints x scores) and one bar chart per score under plots/."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "report.json", results)
    scores = sorted({k for row in results.values() for k in row})
    lines = ["| checkpoint | " + " | ".join(scores) + " |", "|---" * (len(scores) + 1) + "|"]
    for label, row in results.items():
        lines.append(f"| {label} | " + " | ".join(f"{row[s]:.4f}" if s in row else "-" for s in scores) + " |")
    atomic_write(out / "report.md", lambda tmp: tmp.write_text("\n".join(lines) + "\n"))
    (out / "plots").mkdir(exist_ok=True)
    for score in scores:
        labels = [label for label, row in results.items() if score in row]
        fig, ax = plt.subplots(figsize=(max(3, 1.2 * len(labels) + 1), 3))
        ax.bar(range(len(labels)), [results[label][score] for label in labels])
        ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=7)
        ax.set_title(score)
        fig.tight_layout()
        fig.savefig(out / "plots" / f"{score.replace('/', '_')}.png", dpi=80)
        plt.close(fig)


@hydra.main(config_path=str(CONF_DIR), config_name="evaluate", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    startup.freeze_imports()  # every import is done by now
    evaluate(cfg)
    print((Path(cfg.paths.output_dir) / "report.md").read_text())


if __name__ == "__main__":
    main()
