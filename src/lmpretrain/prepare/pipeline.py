"""The prepare pipeline: raw text -> clean, deduplicated, tokenized shards (`prepare(cfg)`; the
command line `python -m lmpretrain.prepare` is `__main__.py`).

    read (streamed) -> normalize -> langid -> quality filters      per source, in worker processes
    -> exact + near dedup across all sources -> train/val split by document hash
    -> train the tokenizer (or load tokenizer.path) -> tokenized shards -> report -> manifest

The output format is documented in `lmpretrain.data.shard_format`. Examples::

    python -m lmpretrain.prepare                      # tiny shakespeare -> logs/prepare/default
    python -m lmpretrain.prepare prepare=shared_mix   # several shared corpora, English + Spanish
    python -m lmpretrain.prepare sources.mine.path=/data/*.jsonl.gz sources.mine.field=content

Restarts are cheap: the run's fingerprint (input files' path/size/mtime + every setting that
shapes the output) is stored in the manifest, so a second run with the same inputs returns at
once. An interrupted run keeps its cleaned sources and finished shards in `<output_dir>/.work`
and continues from there. A previous output is only replaced once all sources have been read
and cleaned, so bad input never destroys it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tokenizers import Tokenizer

from lmpretrain.atomic import atomic_write, atomic_write_json, remove_orphans
from lmpretrain.cleaning.clean import CleaningConfig, CleaningPool
from lmpretrain.cleaning.dedup import DedupConfig
from lmpretrain.cleaning.filters import QualityConfig
from lmpretrain.cleaning.langid import LangIdConfig
from lmpretrain.cleaning.normalize import NormalizeConfig
from lmpretrain.cleaning.report import (
    PLOT_FILES,
    NgramSample,
    ReportConfig,
    fallback_mask,
    source_report,
    write_plots,
)
from lmpretrain.data.corpus import sha256_file
from lmpretrain.data.shard_format import FORMAT, SPLITS, VERSION, ShardInfo, token_dtype
from lmpretrain.errors import ConfigError
from lmpretrain.paths import register_resolvers
from lmpretrain.prepare.cleaned import CleanedSource, assign_split, clean_source, deduplicate
from lmpretrain.prepare.shard_writer import ShardWriter, plan_shards
from lmpretrain.prepare.sources import SourceConfig, input_stats
from lmpretrain.tokenizers.build import TokenizerConfig, read_tokenizer, train_tokenizer

register_resolvers()  # ${repo_root:} and ${data_root:} in conf/prepare*.yaml

SOURCE_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.")
# The train/val rule (`data.corpus.in_val_by_hash`), part of the fingerprint: outputs split by
# another rule (blake2b of the canonical text, before it was shared with training) are rebuilt.
SPLIT_RULE = "crc32"


@dataclass
class SentenceConfig:
    enabled: bool = False  # write a sentence index (.sent.npy) next to each shard
    min_chars: int = 1  # shorter fragments are merged into the previous sentence


@dataclass
class PrepareConfig:
    output_dir: str
    sources: dict[str, SourceConfig]
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    langid: LangIdConfig = field(default_factory=LangIdConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    sentences: SentenceConfig = field(default_factory=SentenceConfig)
    tokenizer: TokenizerConfig = field(default_factory=lambda: TokenizerConfig(kind="bpe", vocab_size=8000))
    report: ReportConfig = field(default_factory=ReportConfig)
    val_fraction: float = 0.01  # of documents, chosen by document hash
    shard_size_mb: float = 128.0  # cleaned text per shard (the .bin is ~0.5-1x that with uint16 ids)
    workers: int = 2  # cleaning processes; 1 = in-process
    batch_size: int = 256  # documents per cleaning batch
    keep_work: bool = False  # keep <output_dir>/.work (cleaned text) after success
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.sources:
            raise ConfigError("no sources configured; add sources.NAME.path=... or use prepare=shared_mix")
        for name in self.sources:
            if not set(name) <= SOURCE_NAME_CHARS:
                raise ConfigError(f"source name {name!r} is used in file names: use letters, digits, '_' and '.'")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction={self.val_fraction} must lie in [0, 1)")
        if self.tokenizer.eos_token is None:
            raise ConfigError("tokenizer.eos_token is null; shards separate documents with it, set one")

    @property
    def cleaning(self) -> CleaningConfig:
        return CleaningConfig(self.normalize, self.langid, self.quality, self.dedup)


def _build(cls, values: dict | None, key: str):
    """A dataclass from a config mapping, with unknown keys reported by their full name."""
    values = dict(values or {})
    known = {f.name for f in dataclasses.fields(cls)}
    if unknown := sorted(set(values) - known):
        raise ConfigError(f"unknown key(s) {[f'{key}.{k}' for k in unknown]}; known: {sorted(known)}")
    return cls(**values)


def load_config(cfg: DictConfig | dict) -> PrepareConfig:
    raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    for informational in ("hydra", "paths", "name"):  # Hydra's and the shared path group's keys
        raw.pop(informational, None)
    nested = {"normalize": NormalizeConfig, "langid": LangIdConfig, "quality": QualityConfig, "dedup": DedupConfig,
              "sentences": SentenceConfig, "tokenizer": TokenizerConfig, "report": ReportConfig}
    for key, cls in nested.items():
        if key in raw:
            raw[key] = _build(cls, raw[key], key)
    raw["sources"] = {name: _build(SourceConfig, src, f"sources.{name}") for name, src in (raw.get("sources") or {}).items()
                      if src is not None}
    if "output_dir" not in raw:
        raise ConfigError("output_dir is not set; give output_dir=PATH")
    return _build(PrepareConfig, raw, "prepare")


def fingerprint(pc: PrepareConfig) -> str:
    """sha256 of the input files' (path, size, mtime) and every setting that changes the output."""
    settings = dataclasses.asdict(pc)
    for key in ("output_dir", "workers", "batch_size", "keep_work", "progress", "report"):
        settings.pop(key)
    inputs = {name: input_stats(name, src) for name, src in pc.sources.items()}
    if pc.tokenizer.path:
        path = Path(pc.tokenizer.path).expanduser()
        inputs["tokenizer.path"] = [(str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns)]
    blob = json.dumps({"settings": settings, "inputs": inputs, "split_rule": SPLIT_RULE}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


# --- stage 3: tokenizer, shards, report, manifest ---


def _is_complete(out: Path, manifest: dict) -> bool:
    return all((out / s["idx"]).is_file() and (out / s["bin"]).is_file() for s in manifest["shards"])


def completed_summary(out: Path, fp: str) -> dict | None:
    """The summary of an existing, complete output with the same fingerprint, else None."""
    path = out / "manifest.json"
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    if manifest.get("fingerprint") != fp or not _is_complete(out, manifest):
        return None
    return _summary(out, manifest)


def _summary(out: Path, manifest: dict) -> dict:
    return {"output_dir": str(out), "counts": manifest["counts"], "shards": len(manifest["shards"]),
            "vocab_size": manifest["vocab_size"], "dtype": manifest["dtype"]}


OWNER_FILE = ".lmpretrain-prepare.json"  # marks an output folder as prepare's; lists what it wrote there


def claim_output_dir(out: Path) -> None:
    """prepare writes only into a folder that is new, empty or its own (marked by OWNER_FILE, or an
    older output's manifest), so it never overwrites or deletes a user's files."""
    out.mkdir(parents=True, exist_ok=True)
    if (out / OWNER_FILE).is_file():
        return
    manifest = out / "manifest.json"
    if manifest.is_file():
        try:
            old = json.loads(manifest.read_text())
        except (OSError, ValueError):
            old = {}
        if isinstance(old, dict) and old.get("format") == FORMAT:  # written before OWNER_FILE existed
            shards = [s[k] for s in old.get("shards", []) for k in ("bin", "idx", "sent") if s.get(k)]
            _record(out, ["manifest.json", "tokenizer.json", "report.json", *shards])
            return
    if foreign := sorted(p.name for p in out.iterdir()):
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise ConfigError(f"output_dir={out} holds files prepare did not write ({', '.join(foreign[:3])}{more}); "
                          f"give a new or empty folder, output_dir=...")
    _record(out, [])


def _listed(out: Path) -> list[str]:
    path = out / OWNER_FILE
    return json.loads(path.read_text())["files"] if path.is_file() else []


def _record(out: Path, names: list[str]) -> None:
    """Add `names` (relative to `out`) to the files prepare owns there, before writing them."""
    listed = _listed(out)
    atomic_write_json(out / OWNER_FILE, {"files": listed + [n for n in names if n not in listed]})


def _clear_previous_output(out: Path, work: Path) -> None:
    """Remove an older output (manifest first, so no reader trusts it) once, when this fingerprint
    first reaches the output stage; only files listed in OWNER_FILE, i.e. written by prepare. Later
    resumes keep their own finished shards."""
    marker = work / "output_started"
    if marker.is_file():
        return
    (out / "manifest.json").unlink(missing_ok=True)
    for name in _listed(out):
        path = out / name
        if path.resolve().parent.is_relative_to(out.resolve()):  # a listed name never leads outside
            path.unlink(missing_ok=True)
    atomic_write_json(out / OWNER_FILE, {"files": []})
    marker.touch()


def _texts_for_tokenizer(sources: list[CleanedSource]) -> Iterator[str]:
    for src in sources:
        for _, text in src.texts(np.flatnonzero(src.keep & ~src.is_val)):
            yield text


def get_tokenizer(pc: PrepareConfig, sources: list[CleanedSource], out: Path, work: Path) -> Tokenizer:
    """Load `tokenizer.path` or train on the training split; saved as <out>/tokenizer.json. A
    resumed run reuses the tokenizer its earlier attempt saved (recorded in .work)."""
    path, marker = out / "tokenizer.json", work / "tokenizer.sha256"
    if marker.is_file() and path.is_file() and sha256_file(path) == marker.read_text():
        return Tokenizer.from_file(str(path))
    if pc.tokenizer.path:
        tok = read_tokenizer(Path(pc.tokenizer.path).expanduser(), "tokenizer.path")
    else:
        tok = train_tokenizer(pc.tokenizer, _texts_for_tokenizer(sources))
    _record(out, [path.name])
    atomic_write(path, lambda tmp: tok.save(str(tmp)))
    atomic_write(marker, lambda tmp: tmp.write_text(sha256_file(path)))
    return tok


def _split_totals(shard_stats: dict[str, dict], infos: list[ShardInfo]) -> dict[str, dict]:
    totals = {split: {"documents": 0, "tokens": 0, "words": 0, "fallback": 0} for split in SPLITS}
    for info in infos:
        for key, value in shard_stats[info.stem].items():
            totals[info.split][key] += value
    return totals


def write_outputs(pc: PrepareConfig, sources: list[CleanedSource], out: Path, work: Path, fp: str,
                  raw_cfg, progress) -> dict:
    _clear_previous_output(out, work)
    tok = get_tokenizer(pc, sources, out, work)
    eos_id = tok.token_to_id(pc.tokenizer.eos_token)
    if eos_id is None:
        raise ConfigError(f"tokenizer has no {pc.tokenizer.eos_token!r} token; set tokenizer.eos_token to one of its tokens")
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    dtype = token_dtype(vocab_size)
    writer = ShardWriter(out, work, tok, eos_id, dtype, fallback_mask(tok))
    plans = {s.name: plan_shards(s, int(pc.shard_size_mb * 1e6), pc.sentences.enabled) for s in sources}
    _record(out, [name for tasks in plans.values() for t in tasks for name in (t.info.bin, t.info.idx, t.info.sent)
                  if name])
    task = progress.add_task("tokenize shards", total=sum(map(len, plans.values())))
    reports, infos = {}, []
    for src in sources:
        ngrams = NgramSample(pc.report.ngram_sizes, pc.report.ngram_sample_docs)
        stats = writer.write_source(src, plans[src.name], ngrams.add, lambda: progress.advance(task))
        src_infos = [t.info for t in plans[src.name]]
        infos += src_infos
        totals = _split_totals(stats, src_infos)
        splits = {k: {"documents": v["documents"], "tokens": v["tokens"]} for k, v in totals.items()}
        reports[src.name] = source_report(src.stats, splits, totals, ngrams, pc.report.top_k)
    counts = {split: {k: sum(r["splits"][split][k] for r in reports.values()) for k in ("documents", "tokens")}
              for split in SPLITS}
    if pc.report.enabled:
        _write_report(pc, reports, counts, out)
    manifest = {
        "format": FORMAT, "version": VERSION, "fingerprint": fp, "dtype": dtype.name, "vocab_size": vocab_size,
        "eos_id": eos_id, "tokenizer": {"file": "tokenizer.json", "sha256": sha256_file(out / "tokenizer.json")},
        "sources": {name: {"path": src.path, "format": src.format, **{k: {s: reports[name]["splits"][s][k]
                    for s in SPLITS} for k in ("documents", "tokens")}} for name, src in pc.sources.items()},
        "counts": counts,
        "config": OmegaConf.to_container(raw_cfg, resolve=True) if isinstance(raw_cfg, DictConfig)
        else dataclasses.asdict(pc) if isinstance(raw_cfg, PrepareConfig) else raw_cfg,
        "shards": [info.to_json() for info in infos],
    }
    _record(out, ["manifest.json"])
    atomic_write_json(out / "manifest.json", manifest)  # last: the output is complete
    return _summary(out, manifest)


def _write_report(pc: PrepareConfig, reports: dict, counts: dict, out: Path) -> None:
    report = {"sources": reports, "counts": counts}
    read = sum(r["stages"]["read"]["documents"] for r in reports.values())
    report["duplicates"] = {kind: sum(r["duplicates"][kind] for r in reports.values()) / max(read, 1)
                            for kind in ("exact", "near")}
    _record(out, ["report.json", *(f"plots/{name}" for name in PLOT_FILES if pc.report.plots)])
    if pc.report.plots:
        report["plots"] = write_plots(report, out / "plots")
    atomic_write_json(out / "report.json", report)


# --- the entrypoint ---


def prepare(cfg: DictConfig | dict | PrepareConfig) -> dict:
    """Run the whole pipeline (or nothing, if the output is already complete); returns a summary."""
    start = time.perf_counter()
    pc = cfg if isinstance(cfg, PrepareConfig) else load_config(cfg)
    out = Path(pc.output_dir).expanduser()
    claim_output_dir(out)
    for folder in (out, out / ".work", out / "plots"):  # temp files of writes a kill interrupted
        remove_orphans(folder)
    fp = fingerprint(pc)
    if (done := completed_summary(out, fp)) is not None:
        return {**done, "skipped": True, "seconds": time.perf_counter() - start}
    work = _work_dir(out, fp)
    with _progress(pc.progress) as progress:
        with CleaningPool(pc.cleaning, pc.workers) as pool:
            sources = [_clean(name, src, pc, work, pool, progress) for name, src in pc.sources.items()]
        deduplicate(sources, pc.dedup)
        assign_split(sources, pc.val_fraction)
        summary = write_outputs(pc, sources, out, work, fp, cfg, progress)
    if not pc.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - start
    mchars = sum(s.stats.stages["read"]["chars"] for s in sources) / 1e6
    return {**summary, "skipped": False, "seconds": seconds, "input_mchars": mchars, "mchars_per_s": mchars / seconds}


def _clean(name: str, src: SourceConfig, pc: PrepareConfig, work: Path, pool: CleaningPool, progress) -> CleanedSource:
    task = progress.add_task(f"clean {name}", total=None)
    return clean_source(name, src, work, pool, pc.batch_size, pc.report.bad_record_examples,
                        lambda n: progress.advance(task, n))


def _work_dir(out: Path, fp: str) -> Path:
    """`<out>/.work`, emptied when it belongs to another fingerprint (other inputs or settings)."""
    work = out / ".work"
    stamp = work / "fingerprint"
    if work.exists() and (not stamp.is_file() or stamp.read_text() != fp):
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    if not stamp.is_file():
        atomic_write(stamp, lambda tmp: tmp.write_text(fp))
    return work


def _progress(enabled: bool):
    if not enabled:
        return nullcontext(_NoProgress())
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())


class _NoProgress:
    def add_task(self, *args, **kwargs) -> int:
        return 0

    def advance(self, *args, **kwargs) -> None:
        pass
