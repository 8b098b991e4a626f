"""Read records from corpus files, streamed: the one reader behind training (`data.corpus.TextSource`,
the labeled and sentence-pair data) and prepare (its raw sources).

    text    lines; or documents of a file, a blank-line separated paragraph or a line (`read_units`)
    jsonl   one JSON value per line (`.jsonl`, `.json`, `.ndjson`), blank lines skipped; `read_fields`
            takes text fields out of each record
    CoNLL   `token<TAB>tag` per line, a blank line after each sentence -> {"tokens": [...], "tags": [...]}
    hf      a local data set that `datasets.load_dataset(..., streaming=True)` reads (optional dependency)

Files may be gzip'd (`.gz`). Nothing reads a whole file into memory. Bad input (binary data,
invalid UTF-8, invalid JSON, a missing field) raises a one-line `DataError` naming `file:line` and
the fix, in the caller's terms (`Keys`: data.files, sources.NAME.path, ...); a caller that passes
`on_bad` gets a `BadRecord` for each bad record instead, and reading goes on.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NamedTuple

import numpy as np

from lmpretrain.errors import ConfigError, DataError

UNITS = ("file", "paragraph", "line")


class BadRecord(NamedTuple):
    origin: str  # "file:line"
    problem: str  # the message, without the origin


OnBad = Callable[[BadRecord], None]


@dataclass(frozen=True)
class Keys:
    """The settings an error message tells the user to change."""

    files: str = "data.files"  # where the file is listed
    field: str = "data.field"  # which field holds the text
    skip: str | None = None  # a setting that skips bad records instead, e.g. "sources.web.on_error=skip"

    def fix(self, *first: str) -> str:
        """'a, b or c': the given fixes, then removing the file, then skipping bad records."""
        options = [*first, f"remove the file from {self.files}", *([f"set {self.skip}"] if self.skip else [])]
        return f"{', '.join(options[:-1])} or {options[-1]}" if len(options) > 1 else options[0]


DATA = Keys()


def is_jsonl(path: Path) -> bool:
    return path.name.removesuffix(".gz").endswith((".jsonl", ".json", ".ndjson"))


def is_conll(path: Path) -> bool:
    return ".conll" in path.name


def open_binary(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _bad(origin: str, problem: str, on_bad: OnBad | None) -> None:
    if on_bad is None:
        raise DataError(f"{origin}: {problem}")
    on_bad(BadRecord(origin, problem))


def read_lines(path: Path, keys: Keys = DATA, on_bad: OnBad | None = None, start: int = 0,
               stop: int | None = None) -> Iterator[tuple[int, str]]:
    """(line number, line with its line end) of a text file, gzip'd or not, each line checked for
    binary data and UTF-8. Only the lines that begin at a (decompressed) byte offset in
    [start, stop) are decoded and returned."""
    try:
        with open_binary(path) as f:
            offset = 0
            for lineno, raw in enumerate(f, start=1):
                begin, offset = offset, offset + len(raw)
                if begin < start:
                    continue
                if stop is not None and begin >= stop:
                    return
                if (text := _decode(raw, f"{path}:{lineno}", keys, on_bad)) is not None:
                    yield lineno, text
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot be read ({e}); check that it is a complete text or .gz file") from e


def _decode(raw: bytes, origin: str, keys: Keys, on_bad: OnBad | None) -> str | None:
    """One line as text, or None (after `_bad`) for binary data or invalid UTF-8."""
    if b"\x00" in raw:
        _bad(origin, f"binary data (NUL byte), not UTF-8 text; {keys.fix()}", on_bad)
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        _bad(origin, f"not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
             f"{keys.fix('convert it with `iconv -t utf-8`')}", on_bad)
        return None


def read_units(path: Path, unit: str, keys: Keys = DATA, on_bad: OnBad | None = None) -> Iterator[tuple[int, str]]:
    """(first line number, text) of the documents of a text file: the whole `file`, each
    blank-line separated `paragraph`, or each non-blank `line`; line ends removed."""
    if unit not in UNITS:
        raise ConfigError(f"unit={unit!r} is unknown; use one of {UNITS}")
    lines: list[str] = []
    first = 1
    for lineno, line in read_lines(path, keys, on_bad):
        line = line.rstrip("\r\n")
        if unit == "line":
            if line.strip():
                yield lineno, line
        elif unit == "paragraph" and not line.strip():
            if lines:
                yield first, "\n".join(lines)
            lines = []
        else:
            if not lines:
                first = lineno
            lines.append(line)
    if lines and "\n".join(lines).strip():
        yield first, "\n".join(lines)


def read_jsonl(path: Path, keys: Keys = DATA, on_bad: OnBad | None = None, start: int = 0,
               stop: int | None = None) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) of each non-blank line of a jsonl file (see `read_lines`)."""
    for lineno, line in read_lines(path, keys, on_bad, start, stop):
        if line.strip() and (parsed := _json(line, f"{path}:{lineno}", keys, on_bad)) is not None:
            yield lineno, parsed[0]


def _json(line: str, origin: str, keys: Keys, on_bad: OnBad | None) -> tuple[object] | None:
    """(value,) of one jsonl line, or None (after `_bad`) for invalid JSON."""
    try:
        return (json.loads(line),)
    except json.JSONDecodeError as e:
        _bad(origin, f"invalid JSON ({e.msg} at column {e.colno}); {keys.fix('fix the line')}", on_bad)
        return None


def _field_problem(record, field: str, keys: Keys) -> str | None:
    if not isinstance(record, dict) or field not in record:
        has = sorted(record) if isinstance(record, dict) else type(record).__name__
        return f"no field {field!r} (has {has}); set {keys.field} to the text field"
    if not isinstance(record[field], str):
        return f"field {field!r} is {type(record[field]).__name__}, not text; set {keys.field} to a string field"
    return None


def field_text(record, field: str, origin: str, keys: Keys = DATA) -> str:
    """`record[field]`, checked to be a string."""
    if (problem := _field_problem(record, field, keys)) is not None:
        raise DataError(f"{origin}: {problem}")
    return record[field]


def read_fields(path: Path, fields: Sequence[str], keys: Keys = DATA, on_bad: OnBad | None = None,
                start: int = 0, stop: int | None = None) -> Iterator[tuple[int, tuple[str, ...]]]:
    """(line number, the texts of `fields`) of each record of a jsonl file (see `read_lines`)."""
    for lineno, record in read_jsonl(path, keys, on_bad, start, stop):
        problem = next((p for f in fields if (p := _field_problem(record, f, keys)) is not None), None)
        if problem is None:
            yield lineno, tuple(record[f] for f in fields)
        else:
            _bad(f"{path}:{lineno}", problem, on_bad)


def read_conll(path: Path, keys: Keys = DATA) -> Iterator[tuple[int, dict]]:
    """(first line number, sentence) of a CoNLL file, a sentence as {"tokens": [...], "tags": [...]}."""
    return _conll_sentences(path, read_lines(path, keys))


def _conll_sentences(path: Path, lines: Iterator[tuple[int, str]]) -> Iterator[tuple[int, dict]]:
    tokens: list[str] = []
    tags: list[str] = []
    first = 1
    for lineno, line in lines:
        line = line.rstrip("\r\n")
        if not line.strip():
            if tokens:
                yield first, {"tokens": tokens, "tags": tags}
            tokens, tags = [], []
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise DataError(f"{path}:{lineno}: a CoNLL line must be token<TAB>tag, got {line[:60]!r}")
        if not tokens:
            first = lineno
        tokens.append(parts[0])
        tags.append(parts[1])
    if tokens:
        yield first, {"tokens": tokens, "tags": tags}


def read_numbered_records(path: Path, keys: Keys = DATA) -> Iterator[tuple[int, object]]:
    """(line number, record) of one file in order: jsonl values, or CoNLL sentences as
    {"tokens", "tags"} numbered by their first line."""
    return read_conll(path, keys) if is_conll(path) else read_jsonl(path, keys)


def read_records(path: Path, keys: Keys = DATA) -> Iterator:
    """The records of one file in order (`read_numbered_records` without the line numbers)."""
    return (record for _, record in read_numbered_records(path, keys))


def read_hf(path: str, split: str, kwargs: dict, setting: str) -> Iterator[tuple[str, object]]:
    """(origin "path[split]:n", record) of a data set `datasets` streams from local files;
    `setting` names its config in messages (e.g. "sources.web")."""
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"{setting}.format=hf needs the `datasets` package: pip install 'lmpretrain[hf]'") from None
    try:
        stream = datasets.load_dataset(path, split=split, streaming=True, **kwargs)
    except Exception as e:  # datasets raises many types (FileNotFoundError, DatasetNotFoundError, ...)
        raise DataError(f"{setting}: datasets cannot stream {path!r} split {split!r} ({e}); "
                        "give a local data set folder or files via hf_kwargs.data_files") from e
    for i, record in enumerate(stream):
        yield f"{path}[{split}]:{i + 1}", record


# -- random access, for a full shuffle of a split that is never held in memory ----------------------

def line_offsets(path: Path) -> np.ndarray:
    """The byte offset at which each line of an uncompressed file begins (index = line number - 1),
    found in 16 MiB chunks: 8 bytes per line in memory, not the file."""
    starts = [np.zeros(1, dtype=np.int64)]
    offset = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            starts.append(np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10).astype(np.int64) + offset + 1)
            offset += len(chunk)
    out = np.concatenate(starts)
    return out[out < offset] if offset else out[:0]  # no line begins at the end of the file


def read_records_at(path: Path, spots, keys: Keys = DATA) -> Iterator[tuple[int, object]]:
    """(line number, record) of the jsonl or CoNLL records that begin at `spots` ((byte offset, line
    number) pairs) of an uncompressed file, in the order given, with the checks of the sequential
    readers (`read_jsonl`, `read_conll`)."""
    conll = is_conll(path)
    with open(path, "rb") as f:
        for offset, lineno in spots:
            f.seek(int(offset))
            if not conll:
                text = _decode(f.readline(), f"{path}:{lineno}", keys, None)
                yield int(lineno), _json(text, f"{path}:{lineno}", keys, None)[0]
                continue

            def sentence_lines(n=int(lineno)):
                while (raw := f.readline()) and raw.strip():
                    yield n, _decode(raw, f"{path}:{n}", keys, None)
                    n += 1

            yield next(_conll_sentences(path, sentence_lines()))
