"""Read raw documents from the configured sources, streamed, with each record's location.

Formats: plain text (a file, a glob or a directory; one document per file, per blank-line-separated
paragraph, or per line), jsonl (one object per line; `field` holds the text), both optionally
gzip'd (`.gz`), and `hf`: any local data set that `datasets.load_dataset(..., streaming=True)`
reads (parquet/json/csv folders, a loading script), an optional dependency.

Bad input (binary data, invalid UTF-8, invalid JSON, a missing field) raises `DataError` naming
`file:line` and the fix. With `on_error: skip` the record is skipped instead and reported through
`BadRecord`s, so nothing disappears silently.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from dataclasses import field as dataclass_field  # `field` is also a SourceConfig key
from pathlib import Path
from typing import NamedTuple

from lmpretrain.errors import ConfigError, DataError

FORMATS = ("auto", "text", "jsonl", "hf")
UNITS = ("file", "paragraph", "line")


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


class BadRecord(NamedTuple):
    origin: str
    problem: str


OnBad = Callable[[BadRecord], None]


def resolve_files(name: str, cfg: SourceConfig) -> list[Path]:
    """The files of a text/jsonl source, sorted; a directory means every file below it."""
    path = Path(os.path.expanduser(cfg.path))
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    else:
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    if not files:
        raise DataError(f"sources.{name}.path={cfg.path} matches no file; fix the path or remove the source")
    return files


def source_format(cfg: SourceConfig, file: Path | None = None) -> str:
    if cfg.format != "auto":
        return cfg.format
    suffixes = [s for s in (file or Path(cfg.path)).suffixes if s != ".gz"]
    return "jsonl" if suffixes and suffixes[-1] in (".jsonl", ".json", ".ndjson") else "text"


def _decoded_lines(file: Path, name: str, on_error: str, on_bad: OnBad) -> Iterator[tuple[int, str]]:
    """(line number, text without newline) of a text file, gzip'd or not, checked for binary data
    and UTF-8 line by line."""
    opener = gzip.open if file.suffix == ".gz" else open
    fix = f"or set sources.{name}.on_error=skip"
    try:
        with opener(file, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                problem = None
                if b"\x00" in raw:
                    problem = f"binary data (NUL byte); this is not a text file: remove it from sources.{name}.path {fix}"
                else:
                    try:
                        yield lineno, raw.decode("utf-8").rstrip("\r\n")
                        continue
                    except UnicodeDecodeError as e:
                        problem = (f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                                   f"re-encode the file as UTF-8 (iconv -t utf-8) {fix}")
                if on_error == "raise":
                    raise DataError(f"{file}:{lineno}: {problem}")
                on_bad(BadRecord(f"{file}:{lineno}", problem))
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{file}: cannot be read ({e}); check that it is a complete text or .gz file") from e


def _text_docs(file: Path, name: str, cfg: SourceConfig, on_bad: OnBad) -> Iterator[RawDoc]:
    lines: list[str] = []
    first = 1
    for lineno, line in _decoded_lines(file, name, cfg.on_error, on_bad):
        if cfg.unit == "line":
            if line.strip():
                yield RawDoc(line, f"{file}:{lineno}")
        elif cfg.unit == "paragraph" and not line.strip():
            if lines:
                yield RawDoc("\n".join(lines), f"{file}:{first}")
            lines = []
        else:
            if not lines:
                first = lineno
            lines.append(line)
    if lines and "\n".join(lines).strip():
        yield RawDoc("\n".join(lines), f"{file}:{first}")


def _field_text(record, name: str, cfg: SourceConfig, origin: str) -> str:
    if not isinstance(record, dict) or cfg.field not in record:
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise DataError(f"{origin}: no field {cfg.field!r} (has {keys}); set sources.{name}.field to the text field")
    text = record[cfg.field]
    if not isinstance(text, str):
        raise DataError(f"{origin}: field {cfg.field!r} is {type(text).__name__}, not text; "
                        f"set sources.{name}.field to a string field")
    return text


def _jsonl_docs(file: Path, name: str, cfg: SourceConfig, on_bad: OnBad) -> Iterator[RawDoc]:
    for lineno, line in _decoded_lines(file, name, cfg.on_error, on_bad):
        if not line.strip():
            continue
        origin = f"{file}:{lineno}"
        try:
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{origin}: invalid JSON ({e.msg} at column {e.colno}); fix the line "
                                f"or set sources.{name}.on_error=skip") from None
            yield RawDoc(_field_text(record, name, cfg, origin), origin)
        except DataError as e:
            if cfg.on_error == "raise":
                raise
            on_bad(BadRecord(origin, str(e).removeprefix(f"{origin}: ")))


def _hf_docs(name: str, cfg: SourceConfig) -> Iterator[RawDoc]:
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"sources.{name}.format=hf needs the `datasets` package: pip install 'lmpretrain[hf]'") from None
    try:
        stream = datasets.load_dataset(cfg.path, split=cfg.split, streaming=True, **cfg.hf_kwargs)
    except Exception as e:  # datasets raises many types (FileNotFoundError, DatasetNotFoundError, ...)
        raise DataError(f"sources.{name}: datasets cannot stream {cfg.path!r} split {cfg.split!r} ({e}); "
                        "give a local data set folder or files via hf_kwargs.data_files") from e
    for i, record in enumerate(stream):
        origin = f"{cfg.path}[{cfg.split}]:{i + 1}"
        yield RawDoc(_field_text(record, name, cfg, origin), origin)


def iter_documents(name: str, cfg: SourceConfig, on_bad: OnBad) -> Iterator[RawDoc]:
    """Every document of one source, in file order, at most `cfg.limit`."""
    if source_format(cfg) == "hf":
        docs: Iterator[RawDoc] = _hf_docs(name, cfg)
    else:
        docs = (doc for file in resolve_files(name, cfg) for doc in _file_docs(file, name, cfg, on_bad))
    for count, doc in enumerate(docs):
        if cfg.limit is not None and count >= cfg.limit:
            return
        yield doc


def _file_docs(file: Path, name: str, cfg: SourceConfig, on_bad: OnBad) -> Iterator[RawDoc]:
    if source_format(cfg, file) == "jsonl":
        return _jsonl_docs(file, name, cfg, on_bad)
    return _text_docs(file, name, cfg, on_bad)


def input_stats(name: str, cfg: SourceConfig) -> list[tuple[str, int, int]]:
    """(path, size, mtime_ns) of each input file: the part of the fingerprint that sees the data."""
    if source_format(cfg) == "hf":
        path = Path(os.path.expanduser(cfg.path))
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.exists() else []
        extra = [(f"hf:{cfg.path}:{cfg.split}:{json.dumps(cfg.hf_kwargs, sort_keys=True, default=str)}", 0, 0)]
    else:
        files, extra = resolve_files(name, cfg), []
    return extra + [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
