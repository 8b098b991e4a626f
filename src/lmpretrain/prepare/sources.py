"""The raw documents of `prepare`'s configured sources, streamed, with each record's location.

Formats (read by `lmpretrain.data.readers`): plain text (a file, a glob or a directory; one
document per file, per blank-line-separated paragraph, or per line), jsonl (one object per line;
`field` holds the text), both optionally gzip'd (`.gz`), and `hf`: any local data set that
`datasets.load_dataset(..., streaming=True)` reads (parquet/json/csv folders, a loading script), an
optional dependency.

Bad input (binary data, invalid UTF-8, invalid JSON, a missing field) raises `DataError` naming
`file:line` and the fix. With `on_error: skip` the record is skipped instead and reported through
`data.readers.BadRecord`s, so nothing disappears silently.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field as dataclass_field  # `field` is also a SourceConfig key
from pathlib import Path
from typing import NamedTuple

from lmpretrain.data.corpus import resolve_files
from lmpretrain.data.readers import UNITS, Keys, OnBad, field_text, is_jsonl, read_fields, read_hf, read_units
from lmpretrain.errors import ConfigError

FORMATS = ("auto", "text", "jsonl", "hf")


@dataclass
class SourceConfig:
    path: str  # file, glob, directory, or (format=hf) anything load_dataset accepts locally
    format: str = "auto"  # auto: *.jsonl[.gz] -> jsonl, else text
    field: str = "text"  # jsonl/hf: the text field
    unit: str = "paragraph"  # text: file | paragraph (blank-line separated) | line
    split: str = "train"  # hf: the split to stream
    hf_kwargs: dict = dataclass_field(default_factory=dict)  # hf: extra load_dataset arguments (data_files, ...)
    limit: int | None = None  # stop after this many documents (quick runs)
    on_error: str = "raise"  # raise | skip (skipped records are listed in report.json)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"source format={self.format!r} is unknown; use one of {FORMATS}")
        if self.unit not in UNITS:
            raise ConfigError(f"source unit={self.unit!r} is unknown; use one of {UNITS}")
        if self.on_error not in ("raise", "skip"):
            raise ConfigError(f"source on_error={self.on_error!r} must be 'raise' or 'skip'")


class RawDoc(NamedTuple):
    text: str
    origin: str  # "file:line" of the record's first line


def _keys(name: str) -> Keys:
    return Keys(files=f"sources.{name}.path", field=f"sources.{name}.field", skip=f"sources.{name}.on_error=skip")


def source_files(name: str, cfg: SourceConfig) -> list[Path]:
    """The files of a text/jsonl source, sorted; a directory means every file below it."""
    return resolve_files([cfg.path], ".", fix=f"fix sources.{name}.path or remove the source")


def source_format(cfg: SourceConfig, file: Path | None = None) -> str:
    if cfg.format != "auto":
        return cfg.format
    return "jsonl" if is_jsonl(file or Path(cfg.path)) else "text"


def _file_docs(file: Path, name: str, cfg: SourceConfig, on_bad: OnBad | None) -> Iterator[RawDoc]:
    if source_format(cfg, file) == "jsonl":
        for lineno, (text,) in read_fields(file, (cfg.field,), _keys(name), on_bad):
            yield RawDoc(text, f"{file}:{lineno}")
    else:
        for lineno, text in read_units(file, cfg.unit, _keys(name), on_bad):
            yield RawDoc(text, f"{file}:{lineno}")


def _hf_docs(name: str, cfg: SourceConfig) -> Iterator[RawDoc]:
    for origin, record in read_hf(cfg.path, cfg.split, cfg.hf_kwargs, f"sources.{name}"):
        yield RawDoc(field_text(record, cfg.field, origin, _keys(name)), origin)


def iter_documents(name: str, cfg: SourceConfig, on_bad: OnBad) -> Iterator[RawDoc]:
    """Every document of one source, in file order, at most `cfg.limit`. A bad record raises
    `DataError`, or with `on_error: skip` goes to `on_bad`."""
    if source_format(cfg) == "hf":
        docs: Iterator[RawDoc] = _hf_docs(name, cfg)
    else:
        skip = on_bad if cfg.on_error == "skip" else None
        docs = (doc for file in source_files(name, cfg) for doc in _file_docs(file, name, cfg, skip))
    for count, doc in enumerate(docs):
        if cfg.limit is not None and count >= cfg.limit:
            return
        yield doc


def input_stats(name: str, cfg: SourceConfig) -> list[tuple[str, int, int]]:
    """(path, size, mtime_ns) of each input file: the part of the fingerprint that sees the data."""
    if source_format(cfg) == "hf":
        path = Path(os.path.expanduser(cfg.path))
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.exists() else []
        extra = [(f"hf:{cfg.path}:{cfg.split}:{json.dumps(cfg.hf_kwargs, sort_keys=True, default=str)}", 0, 0)]
    else:
        files, extra = source_files(name, cfg), []
    return extra + [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
