"""`prepare` end to end (read, clean, dedup, train BPE, tokenize, shards, report) in MB/s of text,
with 1 and 2 cleaning workers on this machine's 2 cores, and the speedup.

    python bench/prepare_speed.py [--limit 20000]

Input: the shared_mix preset's sources (../shared/data), at most --limit documents each.
"""

from __future__ import annotations

import argparse
import os
import tempfile

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from lmpretrain.config import CONF_DIR
from lmpretrain.prepare import prepare


def shared_mix_config(output_dir: str, workers: int, limit: int):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("prepare", overrides=["prepare=shared_mix"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
        cfg.output_dir, cfg.workers, cfg.progress = output_dir, workers, False
        cfg.report.plots = True
        for source in cfg.sources.values():
            source.limit = limit
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=20_000, help="documents per source")
    args = parser.parse_args()
    results = {}
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as out:
            results[workers] = prepare(shared_mix_config(out, workers, args.limit))
    for workers, r in results.items():
        docs = sum(c["documents"] for c in r["counts"].values())
        tokens = sum(c["tokens"] for c in r["counts"].values())
        print(f"workers={workers}: {r['input_mchars']:.1f} M chars in {r['seconds']:.1f} s = "
              f"{r['mchars_per_s']:.2f} MB/s (chars), kept {docs:,} docs / {tokens:,} tokens")
    print(f"speedup 2 workers / 1: {results[1]['seconds'] / results[2]['seconds']:.2f}x "
          f"(cores: {os.cpu_count()}, load average at the end: {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
