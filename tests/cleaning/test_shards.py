import numpy as np

from lmpretrain.data.shard_format import (
    ShardInfo,
    open_index,
    open_shard,
    shard_is_complete,
    token_dtype,
    write_shard,
)


def test_write_and_memory_map_a_shard(tmp_path):
    info = ShardInfo("src", "train", 3, has_sentences=True)
    docs = [np.array([5, 6, 0]), np.array([7, 0]), np.array([70000, 8, 9, 0])]
    sents = [np.array([1, 3]), np.array([2]), np.array([2, 4])]
    dtype = token_dtype(70001)
    write_shard(tmp_path, info, docs, sents, dtype)
    assert info.bin == "src-train-00003.bin" and (info.documents, info.tokens) == (3, 9)
    assert shard_is_complete(tmp_path, info, dtype)
    assert open_shard(tmp_path, info, dtype).tolist() == [5, 6, 0, 7, 0, 70000, 8, 9, 0]
    assert open_index(tmp_path, info).tolist() == [3, 5, 9]
    assert open_index(tmp_path, info, sentences=True).tolist() == [1, 3, 5, 7, 9]
    assert token_dtype(65535) == np.dtype("<u2") and dtype == np.dtype("<u4")


def test_a_truncated_bin_is_not_complete(tmp_path):
    info = ShardInfo("s", "val", 0)
    write_shard(tmp_path, info, [np.array([1, 2, 0])], None, np.dtype("<u2"))
    with open(tmp_path / info.bin, "r+b") as f:
        f.truncate(2)
    assert not shard_is_complete(tmp_path, info, np.dtype("<u2"))
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left behind
