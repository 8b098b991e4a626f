"""data=shards: source mixing by weight, rank x worker coverage, and exact resume through a Trainer."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import make_cfg, require_data
from lmpretrain.data import PackedBlocks
from lmpretrain.prepare import prepare
from lmpretrain.train import build

BLOCK, BATCH = 8, 4


def token_files(tmp_path, name, sizes, base):
    """Files whose tokens are base + running index: a block is identified by its first token."""
    paths, start = [], base
    for i, n in enumerate(sizes):
        p = tmp_path / f"{name}{i}.bin"
        np.arange(start, start + n, dtype=np.uint32).tofile(p)
        paths.append(str(p))
        start += n
    return paths


def first_tokens(batches):
    return [int(x) for b in batches for x in b["input_ids"][:, 0]]


def test_weighted_mixture_within_three_sigma(tmp_path):
    a = token_files(tmp_path, "a", [500], 0)
    b = token_files(tmp_path, "b", [300, 200], 10**6)
    ds = PackedBlocks([a, b], "uint32", BLOCK, BATCH, weights=[1, 3], seed=7)
    n = 20_000
    draws = [s for s, _ in zip((s for s, _ in ds._draws()), range(n))]
    frac_b = sum(draws) / n
    assert abs(frac_b - 0.75) < 3 * (0.75 * 0.25 / n) ** 0.5
    # each source cycles through all its blocks before repeating one
    samples = [int(x["input_ids"][0]) for x, _ in zip(ds, range(400))]
    from_b = [t for t in samples if t >= 10**6]
    n_b = ds.sources[1].num_blocks()
    assert len(set(from_b[:n_b])) == n_b


def test_blocks_never_span_files_and_validation_covers_all_once(tmp_path):
    a = token_files(tmp_path, "a", [100, 41], 0)
    b = token_files(tmp_path, "b", [77], 10**6)
    expected = []
    for files in (a, b):
        for f in files:
            t = np.fromfile(f, dtype=np.uint32)
            expected += [int(t[i * BLOCK]) for i in range((len(t) - 1) // BLOCK)]
    seen = []
    for rank in range(2):
        ds = PackedBlocks([a, b], "uint32", BLOCK, BATCH, shuffle=False, rank=rank, world_size=2)
        for batch in DataLoader(ds, batch_size=BATCH, num_workers=2):
            ids = batch["input_ids"]
            assert torch.equal(ids[:, -1] - ids[:, 0], torch.full((len(ids),), BLOCK - 1))  # contiguous: one file
            seen += first_tokens([batch])
    assert sorted(seen) == sorted(expected)


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory):
    require_data("tinyshakespeare.txt", "debian_packages.validation.jsonl.gz")
    tmp = tmp_path_factory.mktemp("shards")
    from lmpretrain.paths import data_root

    cfg = make_cfg(tmp, [
        f"output_dir={tmp}/out", "sources.shakespeare.limit=1500", "workers=1", "progress=false",
        "tokenizer.vocab_size=400", "report.plots=false", "val_fraction=0.05",
        f"+sources.debian.path={data_root()}/debian_packages.validation.jsonl.gz", "+sources.debian.format=jsonl",
        "+sources.debian.field=description", "+sources.debian.limit=1500",
    ], "prepare")
    prepare(cfg)
    return tmp / "out"


class BatchRecorder:
    def __init__(self):
        import lightning as L

        rec = self

        class _CB(L.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                rec.batches[trainer.global_step] = batch["input_ids"].clone()

        self.batches, self.callback = {}, _CB()


def fit(tmp_path, shards_dir, steps, ckpt_path=None):
    cfg = make_cfg(tmp_path, ["debug=fast", "data=shards", f"data.dir={shards_dir}", "data.weights={shakespeare: 1, debian: 2}",
                              f"trainer.max_steps={steps}", "scheduler.max_steps=12", "trainer.val_check_interval=6",
                              "data.num_workers=2"])
    datamodule, module, trainer = build(cfg)
    rec = BatchRecorder()
    trainer.callbacks.append(rec.callback)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    return rec.batches, datamodule


def test_shards_resume_mid_epoch_gives_identical_batches(tmp_path, shards_dir):
    """12 steps straight vs 6 steps + resume from last.ckpt + 6 steps: the same 12 batches."""
    straight, dm = fit(tmp_path / "a", shards_dir, 12)
    assert dm.source_names("train") == ["debian", "shakespeare"] and dm.weights == [2.0, 1.0]
    first, _ = fit(tmp_path / "b", shards_dir, 6)
    resumed, dm_b = fit(tmp_path / "b", shards_dir, 12, ckpt_path=str(tmp_path / "b" / "checkpoints" / "last.ckpt"))
    assert sorted(first) == list(range(6)) and sorted(resumed) == list(range(6, 12))
    for step in range(12):
        assert torch.equal((first | resumed)[step], straight[step]), step
    assert dm_b.train_batches_seen == 12
