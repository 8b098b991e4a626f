"""Find, verify and stream text corpora: plain text and jsonl, optionally gzip'd.

Everything here streams line by line; nothing reads a whole file into memory. Problems a user can
fix (missing file, wrong checksum, non-UTF-8 bytes, a jsonl line without the text field) raise
`DataError` naming the file, the line and the fix.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import shutil
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from lmpretrain.errors import DataError

SPLITS = ("train", "val")


def _open(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def is_jsonl(path: Path) -> bool:
    return path.name.removesuffix(".gz").endswith((".jsonl", ".json"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(url: str, dest: Path, sha256: str | None) -> None:
    """Download once into the cache, verifying the checksum before the file becomes visible."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + f".part{os.getpid()}")
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DataError(f"could not download {url} ({e}); put the file in $LMPRETRAIN_DATA instead") from None
    if sha256 and (got := sha256_file(tmp)) != sha256:
        tmp.unlink()
        raise DataError(f"download of {url} has sha256 {got}, expected {sha256}; the source changed, check the URL")
    os.replace(tmp, dest)


def resolve_files(
    files: list[str],
    data_dir: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    checksums: dict[str, str] | None = None,
    urls: dict[str, str] | None = None,
) -> list[Path]:
    """Expand `files` (paths or globs; relative ones are under `data_dir`) into existing files.

    A file that is missing but has a URL is downloaded once into `cache_dir`. A file with a
    checksum is verified (a corrupt copy must not silently train a model).
    """
    checksums, urls = checksums or {}, urls or {}
    if not files:
        raise DataError("data.files is empty; list corpus files or globs, e.g. data.files=[my_corpus/*.txt]")
    out: list[Path] = []
    for spec in files:
        path = Path(spec).expanduser()
        if not path.is_absolute():
            path = Path(data_dir) / path
        if glob.has_magic(str(path)):
            matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
            if not matches:
                raise DataError(f"no file matches {path}; check data.files or set LMPRETRAIN_DATA")
            out.extend(matches)
            continue
        if not path.is_file() and spec in urls and cache_dir is not None:
            cached = Path(cache_dir) / "downloads" / Path(spec).name
            if not cached.is_file():
                _download(urls[spec], cached, checksums.get(spec))
            path = cached
        if not path.is_file():
            raise DataError(
                f"corpus file {path} does not exist; set LMPRETRAIN_DATA to the folder holding it "
                f"or pass data.files=[/path/to/file]"
            )
        if spec in checksums and (got := sha256_file(path)) != checksums[spec]:
            raise DataError(f"{path} has sha256 {got}, expected {checksums[spec]}; replace the file with a good copy")
        out.append(path)
    return out


def corpus_fingerprint(paths: list[Path], *settings) -> str:
    """Cheap identity of a corpus: path, size and mtime of each file (no full read), plus the
    `settings` that change which text is read (field, split, validation fraction)."""
    h = hashlib.sha256(repr(settings).encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _decoded_size(path: Path) -> int:
    if path.suffix != ".gz":
        return path.stat().st_size
    with gzip.open(path, "rb") as f:
        return sum(len(chunk) for chunk in iter(lambda: f.read(1 << 20), b""))


def in_val_by_hash(text: str, val_fraction: float) -> bool:
    """Deterministic per-document split: the same text lands in the same split on every machine."""
    return (zlib.crc32(text.encode("utf-8")) & 0xFFFFFFFF) / 2**32 < val_fraction


@dataclass
class TextSource:
    """Documents of one split from a list of files.

    A plain-text file is one document; a jsonl line is one document (its `field`).
    `split="tail"` keeps the first (1 - val_fraction) of each file's bytes for training and the
    rest (cut at a line boundary) for validation, like nanoGPT; `split="hash"` assigns each
    document by a hash of its text.
    """

    paths: list[Path]
    field: str = "text"
    split: str = "tail"
    val_fraction: float = 0.1

    def pieces(self, part: str) -> Iterator[tuple[str, bool]]:
        """Yield (text, ends_document) for split `part`: lines of text files, whole jsonl documents."""
        assert part in SPLITS
        for path in self.paths:
            cut = int(_decoded_size(path) * (1 - self.val_fraction)) if self.split == "tail" else None
            yield from self._file_pieces(path, part, cut)

    def _file_pieces(self, path: Path, part: str, cut: int | None) -> Iterator[tuple[str, bool]]:
        jsonl, offset, pending = is_jsonl(path), 0, None
        with _open(path) as f:
            for lineno, raw in enumerate(f, start=1):
                start, offset = offset, offset + len(raw)
                in_val = None if cut is None else start >= cut
                if in_val is not None and in_val != (part == "val"):
                    continue
                text = _decode(raw, path, lineno)
                if jsonl:
                    text = _json_field(text, self.field, path, lineno)
                    if text is None:
                        continue
                    if in_val is None and in_val_by_hash(text, self.val_fraction) != (part == "val"):
                        continue
                    yield text, True
                else:
                    # Hold one line back so the last one of the file can carry ends_document=True.
                    if pending is not None:
                        yield pending, False
                    pending = text
        if pending is not None:
            yield pending, True

    def texts(self, part: str) -> Iterator[str]:
        return (text for text, _ in self.pieces(part))


def _decode(raw: bytes, path: Path, lineno: int) -> str:
    if b"\x00" in raw:
        raise DataError(f"{path}:{lineno}: binary data (NUL byte); remove this file from data.files")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}:{lineno}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
            f"convert it with `iconv -t utf-8` or remove it from data.files"
        ) from None


def _json_field(line: str, field: str, path: Path, lineno: int) -> str | None:
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg}); fix the line or remove the file") from None
    if not isinstance(record, dict) or field not in record:
        raise DataError(f"{path}:{lineno}: no field {field!r}; set data.field to the key holding the text")
    value = record[field]
    if not isinstance(value, str):
        raise DataError(f"{path}:{lineno}: field {field!r} is {type(value).__name__}, not text; set data.field")
    return value


def open_corpus(
    files: list[str],
    field: str,
    split: str,
    val_fraction: float,
    tokenizer_cfg,
    data_dir: str | os.PathLike,
    cache_dir: str | os.PathLike,
    checksums: dict[str, str] | None = None,
    urls: dict[str, str] | None = None,
):
    """Resolve the files and load (or train and cache) their tokenizer.

    Returns (TextSource, corpus fingerprint, tokenizer). The tokenizer is trained on the training
    split's text, so the field and split settings are part of the fingerprint, not only the files.
    """
    from lmpretrain.tokenizers.build import load_or_train_tokenizer  # the tokenizers import is not free

    paths = resolve_files(files, data_dir, cache_dir, checksums, urls)
    source = TextSource(paths, field, split, val_fraction)
    fingerprint = corpus_fingerprint(paths, field, split, val_fraction)
    tokenizer, _ = load_or_train_tokenizer(
        tokenizer_cfg, lambda: source.texts("train"), fingerprint, Path(cache_dir) / "tokenizers"
    )
    return source, fingerprint, tokenizer
