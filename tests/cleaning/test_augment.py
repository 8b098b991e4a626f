import os
import random
from pathlib import Path

import pytest

from lmpretrain.data.augment import AugmentConfig, TextAugmenter, load_wordnet
from lmpretrain.errors import ConfigError

TEXT = "the quick brown fox jumps over the lazy dog near the river bank today"
TABLE = {"quick": ["fast", "rapid"], "lazy": ["idle"], "dog": ["hound"]}


def test_same_seed_same_text_other_seed_other_text():
    aug = TextAugmenter(AugmentConfig(p_delete=0.2, swap_fraction=0.2))
    assert aug(TEXT, seed=7) == aug(TEXT, seed=7)
    assert len({aug(TEXT, seed=s) for s in range(10)}) > 5


def test_deletion_rate_and_swap_keeps_the_multiset_of_words():
    words = " ".join(f"w{i}" for i in range(2000))
    deleted = TextAugmenter(AugmentConfig(p_delete=0.25, swap_fraction=0.0))(words, seed=1).split()
    assert 0.72 < len(deleted) / 2000 < 0.78
    swapped = TextAugmenter(AugmentConfig(p_delete=0.0, swap_fraction=0.1))(TEXT, seed=1)
    assert sorted(swapped.split()) == sorted(TEXT.split()) and swapped != TEXT


def test_synonym_replacement_and_insertion_from_a_table():
    cfg = AugmentConfig(p_delete=0.0, swap_fraction=0.0, synonym_fraction=0.2, synonyms="table", synonym_table=TABLE)
    out = TextAugmenter(cfg)(TEXT, seed=3).split()
    assert len(out) == len(TEXT.split())
    changed = {a: b for a, b in zip(TEXT.split(), out) if a != b}
    assert changed and all(b in TABLE[a] for a, b in changed.items())
    cfg = AugmentConfig(p_delete=0.0, swap_fraction=0.0, insert_fraction=0.2, synonyms="table", synonym_table=TABLE)
    out = TextAugmenter(cfg)(TEXT, seed=3).split()
    extra = list(out)
    for w in TEXT.split():
        extra.remove(w)
    assert len(extra) == 3 and all(any(w in syns for syns in TABLE.values()) for w in extra)


def test_never_returns_an_empty_example():
    assert TextAugmenter(AugmentConfig(p_delete=1.0))("only words here", seed=0) in {"only", "words", "here"}


def test_synonyms_need_a_source():
    with pytest.raises(ConfigError, match="synonyms"):
        AugmentConfig(synonym_fraction=0.1)
    with pytest.raises(ConfigError, match="wordnet-base"):
        load_wordnet("/nonexistent/wordnet")


WORDNET = Path(os.environ.get("WORDNET_DIR", "/usr/share/wordnet"))  # Debian wordnet-base


@pytest.mark.skipif(not (WORDNET / "data.noun").is_file(), reason="WordNet absent: apt-get install wordnet-base")
def test_wordnet_synonyms():
    table = load_wordnet(str(WORDNET))
    assert "automobile" in table["car"] and "glad" in table["happy"]
    aug = TextAugmenter(AugmentConfig(p_delete=0.0, swap_fraction=0.0, synonym_fraction=0.3, synonyms="wordnet",
                                       wordnet_dir=str(WORDNET)))
    assert aug("the happy dog drove the car", seed=random.Random(0)) != "the happy dog drove the car"
