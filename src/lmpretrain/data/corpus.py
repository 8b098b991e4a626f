"""Find, verify and stream text corpora: plain text and jsonl, optionally gzip'd (read through
`data.readers`), and the hash train/val split that training and prepare share.

Everything here streams line by line; nothing reads a whole file into memory. Problems a user can
fix (missing file, wrong checksum, non-UTF-8 bytes, a jsonl line without the text field) raise
`DataError` naming the file, the line and the fix.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lmpretrain.data.readers import DATA, Keys, is_jsonl, open_binary, read_fields, read_lines
from lmpretrain.errors import ConfigError, DataError

SPLITS = ("train", "val")
MISSING_FIX = "set LMPRETRAIN_DATA to the folder holding it or fix data.files"


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
    fix: str = MISSING_FIX,
) -> list[Path]:
    """Expand `files` (paths, globs or directories; relative ones are under `data_dir`) into
    existing files; a directory means every file below it (hidden ones excepted), sorted.

    A file that is missing but has a URL is downloaded once into `cache_dir`. A file with a
    checksum is verified (a corrupt copy must not silently train a model). `fix` ends the message
    about a missing file: what to change.
    """
    checksums, urls = checksums or {}, urls or {}
    if not files:
        raise DataError("data.files is empty; list corpus files or globs, e.g. data.files=[my_corpus/*.txt]")
    out: list[Path] = []
    for spec in files:
        path = Path(spec).expanduser()
        if not path.is_absolute():
            path = Path(data_dir) / path
        if glob.has_magic(str(path)) or path.is_dir():
            if path.is_dir():
                matches = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
            else:
                matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
            if not matches:
                raise DataError(f"no file matches {path}; {fix}")
            out.extend(matches)
            continue
        if not path.is_file() and spec in urls and cache_dir is not None:
            cached = Path(cache_dir) / "downloads" / Path(spec).name
            if not cached.is_file():
                _download(urls[spec], cached, checksums.get(spec))
            path = cached
        if not path.is_file():
            raise DataError(f"corpus file {path} does not exist; {fix}")
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
    with open_binary(path) as f:
        return sum(len(chunk) for chunk in iter(lambda: f.read(1 << 20), b""))


def hash_fraction(text: str) -> float:
    """A position in [0, 1) fixed by the text alone: the one rule behind every hash split, so the
    same text lands in the same split on every machine, in training and in prepare alike."""
    return (zlib.crc32(text.encode("utf-8")) & 0xFFFFFFFF) / 2**32


def in_val_by_hash(text: str, val_fraction: float) -> bool:
    """Per-document train/val split (`TextSource` with split="hash", prepare)."""
    return hash_fraction(text) < val_fraction


def split_by_hash(text: str, val_fraction: float, test_fraction: float = 0.0, fold: int = 0) -> str:
    """"val", "test" or "train" for a record keyed by `text`: validation takes the first
    `val_fraction` of the hash range (as `in_val_by_hash`), test the next `test_fraction`. Fold k
    rotates the range by k * `test_fraction` first, so folds 0 .. 1/test_fraction - 1 make every
    record a test record once (k-fold splits: `LabeledDataModule`'s `fold`)."""
    h = (hash_fraction(text) - fold * test_fraction) % 1.0
    return "val" if h < val_fraction else "test" if h < val_fraction + test_fraction else "train"


def fields_by_hash(paths: list[Path], fields: tuple[str, ...], val_fraction: float, part: str,
                   keys: Keys = DATA) -> Iterator[tuple[str, ...]]:
    """The texts of `fields` of each record of split `part` from jsonl files; the split goes by the
    hash of the first field (`in_val_by_hash`)."""
    for path in paths:
        if not is_jsonl(path):
            raise DataError(f"{path}: {keys.field} needs jsonl files (one record per line with the fields "
                            f"{list(fields)}); list .jsonl files in {keys.files}")
        for _, texts in read_fields(path, fields, keys):
            if in_val_by_hash(texts[0], val_fraction) == (part == "val"):
                yield texts


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
        # tail split: the part's lines are those that begin before (train) or from (val) byte `cut`
        start, stop = (0, None) if cut is None else (cut, None) if part == "val" else (0, cut)
        if is_jsonl(path):
            for _, (text,) in read_fields(path, (self.field,), start=start, stop=stop):
                if cut is None and in_val_by_hash(text, self.val_fraction) != (part == "val"):
                    continue
                yield text, True
            return
        pending = None
        for _, text in read_lines(path, start=start, stop=stop):
            # Hold one line back so the last one of the file can carry ends_document=True.
            if pending is not None:
                yield pending, False
            pending = text
        if pending is not None:
            yield pending, True

    def texts(self, part: str) -> Iterator[str]:
        return (text for text, _ in self.pieces(part))


class TextCorpus:
    """The text a pretraining DataModule reads and how it splits (`data.files`, `data.field`,
    `data.split`, `data.val_fraction`, `data.data_dir`, `data.cache_dir`, `data.checksums`,
    `data.urls`), checked when the DataModule is built; `open()` reads it."""

    KEYS = ("field", "split", "val_fraction", "data_dir", "cache_dir", "checksums", "urls")

    def __init__(self, files: list[str], tokenizer: dict | None, field: str = "text", split: str = "tail",
                 val_fraction: float = 0.1, data_dir: str | None = None, cache_dir: str | None = None,
                 checksums: dict[str, str] | None = None, urls: dict[str, str] | None = None):
        from lmpretrain.paths import cache_root, data_root
        from lmpretrain.tokenizers.build import TokenizerConfig  # the tokenizers import is not free

        if split not in ("tail", "hash"):
            raise ConfigError(f"data.split={split!r} must be 'tail' or 'hash'")
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction={val_fraction} must be in (0, 1)")
        self.files, self.field, self.split, self.val_fraction = list(files), field, split, val_fraction
        self.tokenizer = TokenizerConfig(**dict(tokenizer or {}))
        self.data_dir = Path(data_dir) if data_dir else data_root()
        self.cache_dir = Path(cache_dir) if cache_dir else cache_root()
        self.checksums, self.urls = dict(checksums or {}), dict(urls or {})

    @classmethod
    def from_config(cls, files: list[str], tokenizer, settings: dict, **defaults) -> TextCorpus:
        """From a DataModule's remaining keyword arguments; an unknown key is a one-line error."""
        if unknown := sorted(set(settings) - set(cls.KEYS)):
            raise ConfigError(f"data has unknown key(s) {unknown}; valid corpus keys: {list(cls.KEYS)}")
        return cls(files, tokenizer, **{**defaults, **settings})

    def open(self, tokenizer=None):
        """Resolve the files and load (or train and cache) their tokenizer, unless one is given
        (a checkpoint's, to evaluate or continue a model on this corpus).

        Returns (TextSource, corpus fingerprint, tokenizer). The tokenizer is trained on the training
        split's text, so the field and split settings are part of the fingerprint, not only the files.
        """
        from lmpretrain.tokenizers.build import load_or_train_tokenizer

        paths = resolve_files(self.files, self.data_dir, self.cache_dir, self.checksums, self.urls)
        source = TextSource(paths, self.field, self.split, self.val_fraction)
        fingerprint = corpus_fingerprint(paths, self.field, self.split, self.val_fraction)
        if tokenizer is not None:
            return source, fingerprint, tokenizer
        tokenizer, _ = load_or_train_tokenizer(
            self.tokenizer, lambda: source.texts("train"), fingerprint, self.cache_dir / "tokenizers"
        )
        return source, fingerprint, tokenizer
