"""lmpretrain.prepare end to end: format, idempotence, resume, bad input, dedup across sources."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from conftest import make_cfg
from lmpretrain.data.shard_format import open_index, open_shard, read_manifest
from lmpretrain.errors import DataError
from lmpretrain.paths import data_root, repo_root
from lmpretrain.prepare import prepare, shard_writer

SHAKESPEARE = data_root() / "tinyshakespeare.txt"


def paragraphs(n: int) -> list[str]:
    """The first n speeches of tiny shakespeare with at least 8 words."""
    paras = [p for p in SHAKESPEARE.read_text(encoding="utf-8").split("\n\n") if len(p.split()) >= 8]
    return paras[:n]


def config(tmp_path: Path, sources: dict, **overrides) -> dict:
    cfg = {
        "output_dir": str(tmp_path / "out"),
        "sources": sources,
        "workers": 1,
        "progress": False,
        "langid": {"languages": ["en"], "min_chars": 50},
        "quality": {"min_words": 5, "max_mean_word_length": 12.0},
        "tokenizer": {"kind": "bpe", "vocab_size": 400},
        "val_fraction": 0.1,
        "shard_size_mb": 0.02,
        "report": {"plots": False, "ngram_sample_docs": 200},
    }
    return {**cfg, **overrides}


def write_text(path: Path, docs: list[str]) -> str:
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return str(path)


def shard_files(out: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(out.glob("*-*-*.*"))}


def documents(out: Path, split: str = "train") -> list[np.ndarray]:
    manifest = read_manifest(out)
    docs = []
    for info in manifest.shards_for(split):
        tokens, ends = open_shard(out, info), open_index(out, info)
        docs += np.split(np.asarray(tokens), np.asarray(ends)[:-1])
    return docs


def test_default_config_prepares_shakespeare_into_valid_shards(tmp_path):
    cfg = make_cfg(tmp_path, [f"output_dir={tmp_path}/out", "sources.shakespeare.limit=1500", "workers=1",
                              "progress=false", "tokenizer.vocab_size=500", "shard_size_mb=0.05"], "prepare")
    summary = prepare(cfg)
    out = tmp_path / "out"
    manifest = read_manifest(out)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert manifest.dtype == np.dtype("<u2") and manifest.eos_id == tok.token_to_id("<|endoftext|>")
    assert len(manifest.shards) == summary["shards"] > 1
    train = documents(out, "train")
    assert len(train) == summary["counts"]["train"]["documents"] == sum(s.documents for s in manifest.shards_for("train"))
    assert all(doc[-1] == manifest.eos_id and manifest.eos_id not in doc[:-1] for doc in train)
    sources = {p.strip() for p in SHAKESPEARE.read_text(encoding="utf-8").split("\n\n")}
    assert tok.decode(train[0][:-1].tolist()) in sources  # byte-level BPE round-trips the cleaned text
    report = json.loads((out / "report.json").read_text())
    stages = report["sources"]["shakespeare"]["stages"]
    assert stages["read"]["documents"] == 1500
    assert [stages[s]["documents"] for s in ("read", "langid", "quality", "near_dedup")] == sorted(
        [stages[s]["documents"] for s in ("read", "langid", "quality", "near_dedup")], reverse=True)
    assert stages["near_dedup"]["documents"] == sum(summary["counts"][s]["documents"] for s in ("train", "val"))
    assert {Path(p).name for p in report["plots"]} == {p.name for p in (out / "plots").glob("*.png")}
    assert len(report["plots"]) == 6


def test_second_run_is_a_no_op(tmp_path):
    cfg = config(tmp_path, {"s": {"path": write_text(tmp_path / "a.txt", paragraphs(300))}})
    first = prepare(cfg)
    before = shard_files(tmp_path / "out")
    manifest_mtime = (tmp_path / "out" / "manifest.json").stat().st_mtime_ns
    second = prepare(cfg)
    assert second["skipped"] and not first["skipped"]
    assert second["counts"] == first["counts"]
    assert shard_files(tmp_path / "out") == before
    assert (tmp_path / "out" / "manifest.json").stat().st_mtime_ns == manifest_mtime
    assert not (tmp_path / "out" / ".work").exists()


def test_changed_input_rebuilds(tmp_path):
    path = tmp_path / "a.txt"
    cfg = config(tmp_path, {"s": {"path": write_text(path, paragraphs(200))}})
    first = prepare(cfg)
    write_text(path, paragraphs(300))
    second = prepare(cfg)
    assert not second["skipped"]
    assert second["counts"]["train"]["documents"] > first["counts"]["train"]["documents"]


def test_interrupted_run_resumes_at_shard_granularity(tmp_path, monkeypatch):
    cfg = config(tmp_path, {"s": {"path": write_text(tmp_path / "a.txt", paragraphs(600))}})
    reference = prepare({**cfg, "output_dir": str(tmp_path / "reference")})
    real_write, written = shard_writer.write_shard, []

    def write_then_crash(directory, info, *args):
        if len(written) == 3:
            raise KeyboardInterrupt("simulated crash")
        real_write(directory, info, *args)
        written.append(info.stem)

    monkeypatch.setattr(shard_writer, "write_shard", write_then_crash)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg)
    out = tmp_path / "out"
    assert not (out / "manifest.json").exists()
    survivors = shard_files(out)
    assert {name.split(".")[0] for name in survivors} == set(written)
    monkeypatch.setattr(shard_writer, "write_shard", real_write)

    resumed = prepare(cfg)
    assert not resumed["skipped"] and resumed["counts"] == reference["counts"]
    after = shard_files(out)
    assert all(after[name] == ident for name, ident in survivors.items())  # finished shards not rewritten
    for name in after:
        assert (out / name).read_bytes() == (tmp_path / "reference" / name).read_bytes()


def test_two_workers_give_the_same_shards(tmp_path):
    docs = paragraphs(400)
    one = prepare(config(tmp_path, {"s": {"path": write_text(tmp_path / "a.txt", docs)}}, output_dir=str(tmp_path / "w1")))
    two = prepare(config(tmp_path, {"s": {"path": str(tmp_path / "a.txt")}}, output_dir=str(tmp_path / "w2"),
                         workers=2, batch_size=16))
    assert one["counts"] == two["counts"]
    for path in sorted((tmp_path / "w1").glob("*.bin")):
        assert path.read_bytes() == (tmp_path / "w2" / path.name).read_bytes()


def test_dedup_works_across_sources_and_the_split_follows_the_document(tmp_path):
    docs = paragraphs(300)
    near = [d.replace(" the ", " a ", 1) if len(d.split()) > 40 else d for d in docs[:100]]
    cfg = config(tmp_path, {
        "a": {"path": write_text(tmp_path / "a.txt", docs)},
        "b": {"path": write_text(tmp_path / "b.txt", docs[:100] + near + ["A brand new speech that appears nowhere else, my lord, I swear it."])},
    })
    prepare(cfg)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    b = report["sources"]["b"]
    assert b["duplicates"]["exact"] >= 100  # its copies of a's speeches
    assert b["stages"]["near_dedup"]["documents"] == 1  # only the new speech survives
    assert read_manifest(tmp_path / "out").raw["sources"]["b"]["documents"] in ({"train": 1, "val": 0},
                                                                                 {"train": 0, "val": 1})


def test_sentence_index_marks_sentence_ends(tmp_path):
    docs = ["First sentence here. Second one follows? Third ends it!", "Only one sentence in this document."]
    cfg = config(tmp_path, {"s": {"path": write_text(tmp_path / "a.txt", docs)}}, sentences={"enabled": True},
                 langid={"enabled": False}, val_fraction=0.0, dedup={"near": False})
    prepare(cfg)
    out = tmp_path / "out"
    info = read_manifest(out).shards_for("train")[0]
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    tokens, sent, ends = np.asarray(open_shard(out, info)), open_index(out, info, sentences=True), open_index(out, info)
    assert set(ends.tolist()) <= set(sent.tolist())
    pieces = [tok.decode(tokens[a:b].tolist()).strip() for a, b in zip([0, *sent[:-1]], sent)]
    assert pieces == ["First sentence here.", "Second one follows?", "Third ends it!",
                      "Only one sentence in this document."]


def test_hf_streaming_source(tmp_path):
    pytest.importorskip("datasets")
    rows = [{"body": p} for p in paragraphs(120)]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    src = {"path": "json", "format": "hf", "field": "body", "hf_kwargs": {"data_files": str(tmp_path / "data.jsonl")}}
    summary = prepare(config(tmp_path, {"hf": src}))
    assert summary["counts"]["train"]["documents"] + summary["counts"]["val"]["documents"] > 100


# --- bad input: file and line in a one-line error, the previous output left intact ---


def good_output(tmp_path: Path) -> tuple[dict, dict]:
    cfg = config(tmp_path, {"good": {"path": write_text(tmp_path / "good.txt", paragraphs(150))}})
    prepare(cfg)
    return cfg, shard_files(tmp_path / "out")


def bad_file(tmp_path: Path, kind: str) -> tuple[str, dict, str]:
    """A source with one bad record in line 3, its config, and the expected message."""
    if kind == "binary":
        path = tmp_path / "bad.txt"
        path.write_bytes(b"fine text line one\nline two\n\x00\x01\x02ELF\x00\n")
        return str(path), {"format": "text"}, f"{path}:3: binary data"
    if kind == "encoding":
        path = tmp_path / "bad.txt.gz"
        with gzip.open(path, "wb") as f:
            f.write("good line\n\nna\u00efve caf\u00e9\n".encode("latin-1"))
        return str(path), {"format": "text"}, f"{path}:3: not UTF-8 (byte 0xef at column 3)"
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "one fine document with words"}\n{"text": "two"}\n{"body": "no text field"}\n')
    return str(path), {}, f"{path}:3: no field 'text' (has ['body'])"


@pytest.mark.parametrize("kind", ["binary", "encoding", "missing_field"])
def test_bad_input_names_file_and_line_and_keeps_previous_output(tmp_path, kind):
    cfg, before = good_output(tmp_path)
    path, extra, message = bad_file(tmp_path, kind)
    with pytest.raises(DataError) as err:
        prepare({**cfg, "sources": {**cfg["sources"], "bad": {"path": path, **extra}}})
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert "on_error=skip" in str(err.value) or "sources.bad.field" in str(err.value)
    assert shard_files(tmp_path / "out") == before  # nothing lost
    assert prepare(cfg)["skipped"]  # and still complete


def test_skipped_records_are_listed_in_the_report(tmp_path):
    path = tmp_path / "mixed.jsonl"
    good = [{"text": p} for p in paragraphs(50)]
    lines = [json.dumps(r) for r in good[:20]] + ['{"body": "x"}', "not json"] + [json.dumps(r) for r in good[20:]]
    path.write_text("\n".join(lines) + "\n")
    cfg = config(tmp_path, {"m": {"path": str(path), "on_error": "skip"}}, langid={"enabled": False},
                 quality={"enabled": False}, dedup={"near": False})
    summary = prepare(cfg)
    bad = json.loads((tmp_path / "out" / "report.json").read_text())["sources"]["m"]["bad_records"]
    assert bad["count"] == 2
    assert bad["examples"][0].startswith(f"{path}:21: no field 'text'")
    assert bad["examples"][1].startswith(f"{path}:22: invalid JSON")
    assert sum(c["documents"] for c in summary["counts"].values()) == 50  # every good record kept


def test_empty_source_is_an_error(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n   \n")
    with pytest.raises(DataError, match="source 'e' .* has no documents"):
        prepare(config(tmp_path, {"e": {"path": str(tmp_path / "empty.txt")}}))
    with pytest.raises(DataError, match="no file matches"):
        prepare(config(tmp_path, {"e": {"path": str(tmp_path / "missing*.txt")}}))


def test_cli_prints_one_line_error_and_exits_2(tmp_path):
    path, _, message = bad_file(tmp_path, "encoding")
    cmd = [sys.executable, "-m", "lmpretrain.prepare", f"output_dir={tmp_path}/out", "~sources.shakespeare",
           f"+sources.bad.path={path}", "progress=false", "workers=1"]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=repo_root(), timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), result.stderr
