"""`prepare` never deletes or overwrites what it did not write: a non-empty output_dir without its
marker is refused; a rebuild removes only the files its marker lists."""

import json
import subprocess
import sys

import pytest

from lmpretrain.atomic import TMP_SUFFIX
from lmpretrain.errors import ConfigError
from lmpretrain.paths import repo_root
from lmpretrain.prepare import prepare
from lmpretrain.prepare.pipeline import OWNER_FILE
from test_prepare import config, paragraphs, write_text


def user_folder(out):
    """A folder holding what the issue saw deleted or overwritten: *.bin, plots/*.png, tokenizer.json, .work."""
    files = {"notes.bin": b"user bytes", "plots/figure.png": b"user png", "tokenizer.json": b"{}",
             ".work/keep.txt": b"user work"}
    for name, data in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    return files


def snapshot(out):
    return {str(p.relative_to(out)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(out.rglob("*")) if p.is_file()}


def test_refuses_a_folder_it_did_not_write_and_touches_nothing(tmp_path):
    out = tmp_path / "out"
    user_folder(out)
    before = snapshot(out)
    cfg = config(tmp_path, {"s": {"path": write_text(tmp_path / "a.txt", paragraphs(100))}})
    with pytest.raises(ConfigError, match=rf"output_dir={out} holds files prepare did not write \(\.work, notes\.bin, "
                                          r"plots and 1 more\); give a new or empty folder"):
        prepare(cfg)
    assert snapshot(out) == before


def test_cli_refusal_is_one_line_exit_2(tmp_path):
    out = tmp_path / "out"
    user_folder(out)
    before = snapshot(out)
    cmd = [sys.executable, "-m", "lmpretrain.prepare", f"output_dir={out}", "progress=false", "workers=1",
           "sources.shakespeare.limit=50"]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=repo_root(), timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: output_dir={out} holds files prepare did not write")
    assert snapshot(out) == before


def test_rebuild_removes_only_listed_files(tmp_path):
    """First run: 600 speeches; the user then drops files into the output; second run (fewer speeches,
    so fewer shards): the stale shards go, the user's files (shard-like names included) stay."""
    path = tmp_path / "a.txt"
    cfg = config(tmp_path, {"s": {"path": write_text(path, paragraphs(600))}}, report={"plots": True,
                                                                                        "ngram_sample_docs": 50})
    first = prepare(cfg)
    out = tmp_path / "out"
    first_shards = {p.name for p in out.glob("s-*")}
    listed = set(json.loads((out / OWNER_FILE).read_text())["files"])
    assert first_shards <= listed and {"manifest.json", "tokenizer.json", "report.json", "plots/stages.png"} <= listed
    mine = {"mine.txt": b"mine", "other-train-00000.bin": b"looks like a shard", "plots/mine.png": b"mine"}
    for name, data in mine.items():
        (out / name).write_bytes(data)

    write_text(path, paragraphs(150))
    second = prepare(cfg)
    second_shards = {p.name for p in out.glob("s-*")}
    assert second["shards"] < first["shards"] and len(second_shards) < len(first_shards)
    manifest = json.loads((out / "manifest.json").read_text())
    assert second_shards == {s[k] for s in manifest["shards"] for k in ("bin", "idx")}  # no stale shard left
    assert all((out / name).read_bytes() == data for name, data in mine.items())


def test_temp_files_of_a_killed_run_are_removed(tmp_path):
    cfg = config(tmp_path, {"s": {"path": write_text(tmp_path / "a.txt", paragraphs(100))}})
    prepare(cfg)
    out = tmp_path / "out"
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()  # a pid no process has any more: the writer was killed
    orphans = [out / f".s-train-00000.bin.{p.pid}{TMP_SUFFIX}", out / ".work" / f".x.{p.pid}{TMP_SUFFIX}"]
    for orphan in orphans:
        orphan.parent.mkdir(exist_ok=True)
        orphan.write_bytes(b"half")
    (out / "mine.tmp").write_bytes(b"mine")
    assert prepare(cfg)["skipped"]
    assert not any(o.exists() for o in orphans) and (out / "mine.tmp").read_bytes() == b"mine"


def test_output_of_an_earlier_version_without_marker_is_still_its_own(tmp_path):
    path = tmp_path / "a.txt"
    cfg = config(tmp_path, {"s": {"path": write_text(path, paragraphs(400))}})
    prepare(cfg)
    out = tmp_path / "out"
    (out / OWNER_FILE).unlink()  # as written before the marker existed: the manifest says it is prepare's
    write_text(path, paragraphs(150))
    assert not prepare(cfg)["skipped"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert {p.name for p in out.glob("s-*")} == {s[k] for s in manifest["shards"] for k in ("bin", "idx")}
