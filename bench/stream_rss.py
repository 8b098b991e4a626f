"""Peak RSS while streaming a corpus vs the same corpus 10x larger (one epoch each, own process).

    python bench/stream_rss.py [--tokens 10000000]

Builds a token file of N tokens and one of 10N, streams every block of each once through the
training stream (shuffled, `PackedBlocks`) in a fresh subprocess, and prints both peak RSS
figures and their ratio (target: the 10x corpus within 10%, i.e. ratio <= 1.10).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = """
import resource, sys
from lmpretrain.data import PackedBlocks
path, block = sys.argv[1], 256
ds = PackedBlocks(path, "uint16", block, 12, seed=0, epochs=1)
n = sum(1 for _ in ds)
print(n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_mb(path: Path) -> tuple[int, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=True)
    blocks, kb = out.stdout.split()
    return int(blocks), int(kb) / 1024


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=10_000_000)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        small, large = Path(tmp) / "small.bin", Path(tmp) / "large.bin"
        rng.integers(0, 50_000, args.tokens, dtype=np.uint16).tofile(small)
        with open(large, "wb") as f:
            for _ in range(10):
                rng.integers(0, 50_000, args.tokens, dtype=np.uint16).tofile(f)
        (n_small, rss_small), (n_large, rss_large) = peak_rss_mb(small), peak_rss_mb(large)
    print(f"small: {args.tokens * 2 / 1e6:.0f} MB, {n_small:,} blocks streamed, peak RSS {rss_small:.1f} MB")
    print(f"large: {args.tokens * 20 / 1e6:.0f} MB, {n_large:,} blocks streamed, peak RSS {rss_large:.1f} MB")
    print(f"ratio large/small peak RSS = {rss_large / rss_small:.3f}  (target <= 1.10)")


if __name__ == "__main__":
    main()
