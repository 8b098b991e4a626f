"""`lmpretrain.prepare`: raw text -> clean, deduplicated, tokenized shards, before any training.

    sources.py       the configured sources' raw documents (read by `lmpretrain.data.readers`)
    cleaned.py       stages 1-2: clean each source (filters from `lmpretrain.cleaning`), checkpointed;
                     dedup across sources; the train/val split (`data.corpus.in_val_by_hash`)
    shard_writer.py  stage 3: tokenize into the shard format of `lmpretrain.data.shard_format`
    pipeline.py      the config, the fingerprint, tokenizer + report + manifest: `prepare(cfg)`
    __main__.py      `python -m lmpretrain.prepare [prepare=shared_mix] [key=value ...]`

Dependencies point one way: prepare -> cleaning, data, tokenizers; nothing in `lmpretrain.data`
imports prepare or cleaning, so training never loads prepare-time code.
"""

from lmpretrain.prepare.pipeline import PrepareConfig, load_config, prepare

__all__ = ["PrepareConfig", "load_config", "prepare"]
