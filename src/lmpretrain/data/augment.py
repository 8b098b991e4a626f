"""Text augmentation for fine-tuning data, EDA style (Wei & Zou 2019): random deletion, swap and
insertion of words, and synonym replacement, all driven by a seed so a given (seed, example)
always yields the same text.

Synonyms come from WordNet (Debian's `wordnet-base` installs it under /usr/share/wordnet:
`apt-get install wordnet-base`) or from a small table given in the config, which is what tests and
languages without a WordNet use. Random insertion inserts a synonym of a word of the text, so it
needs one of the two.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from lmpretrain.errors import ConfigError

WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
_ADJ_MARKER = re.compile(r"\((a|p|ip)\)$")  # adjective position markers: "erstwhile(a)"


@dataclass
class AugmentConfig:
    enabled: bool = True
    p_delete: float = 0.1  # each word is dropped with this probability
    swap_fraction: float = 0.1  # swaps: round(fraction * words), at least 1 when > 0
    insert_fraction: float = 0.0  # insertions of a synonym of a random word
    synonym_fraction: float = 0.0  # words replaced by one of their synonyms
    synonyms: str | None = None  # "wordnet" | "table" | None
    wordnet_dir: str = "/usr/share/wordnet"
    synonym_table: dict[str, list[str]] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.insert_fraction or self.synonym_fraction) and self.synonyms is None:
            raise ConfigError("augment.insert_fraction/synonym_fraction need augment.synonyms=wordnet or table")
        if self.synonyms not in (None, "wordnet", "table"):
            raise ConfigError(f"augment.synonyms={self.synonyms!r} must be wordnet, table or null")


@lru_cache(maxsize=2)
def load_wordnet(directory: str) -> dict[str, tuple[str, ...]]:
    """word -> its synonyms (other lemmas of the synsets it belongs to), from WordNet data.* files.

    A data line is `offset lex_filenum ss_type w_cnt word lex_id [word lex_id ...] ...`, with
    w_cnt in hex; license-header lines start with spaces."""
    root = Path(directory)
    if not all((root / name).is_file() for name in WORDNET_FILES):
        raise ConfigError(f"WordNet data not found in {root}; run `apt-get install wordnet-base`, "
                          "set augment.wordnet_dir, or use augment.synonyms=table")
    synonyms: dict[str, set[str]] = {}
    for name in WORDNET_FILES:
        with open(root / name, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(" "):
                    continue
                fields = line.split()
                lemmas = [_ADJ_MARKER.sub("", fields[4 + 2 * i]).replace("_", " ").lower()
                          for i in range(int(fields[3], 16))]
                for lemma in lemmas:
                    synonyms.setdefault(lemma, set()).update(x for x in lemmas if x != lemma)
    return {word: tuple(sorted(syns)) for word, syns in synonyms.items() if syns}


class TextAugmenter:
    def __init__(self, cfg: AugmentConfig):
        self.cfg = cfg
        if cfg.synonyms == "wordnet":
            self.table = load_wordnet(cfg.wordnet_dir)
        else:
            self.table = {w.lower(): tuple(s) for w, s in cfg.synonym_table.items()}

    def synonyms(self, word: str) -> tuple[str, ...]:
        return self.table.get(word.lower().strip(".,;:!?\"'()"), ())

    def __call__(self, text: str, seed: int | random.Random | None = None) -> str:
        """The augmented text; `seed` (e.g. hash of (cfg.seed, epoch, index)) makes it reproducible."""
        if not self.cfg.enabled:
            return text
        rng = seed if isinstance(seed, random.Random) else random.Random(self.cfg.seed if seed is None else seed)
        words = text.split()
        words = self.replace_synonyms(words, rng)
        words = self.insert(words, rng)
        words = self.swap(words, rng)
        return " ".join(self.delete(words, rng))

    def _count(self, fraction: float, words: list[str]) -> int:
        return max(1, round(fraction * len(words))) if fraction > 0 and words else 0

    def replace_synonyms(self, words: list[str], rng: random.Random) -> list[str]:
        words = list(words)
        candidates = [i for i, w in enumerate(words) if self.synonyms(w)]
        for i in rng.sample(candidates, min(self._count(self.cfg.synonym_fraction, words), len(candidates))):
            words[i] = rng.choice(self.synonyms(words[i]))
        return words

    def insert(self, words: list[str], rng: random.Random) -> list[str]:
        words = list(words)
        candidates = [w for w in words if self.synonyms(w)]
        for _ in range(self._count(self.cfg.insert_fraction, words) if candidates else 0):
            words.insert(rng.randrange(len(words) + 1), rng.choice(self.synonyms(rng.choice(candidates))))
        return words

    def swap(self, words: list[str], rng: random.Random) -> list[str]:
        words = list(words)
        for _ in range(self._count(self.cfg.swap_fraction, words) if len(words) > 1 else 0):
            i, j = rng.sample(range(len(words)), 2)
            words[i], words[j] = words[j], words[i]
        return words

    def delete(self, words: list[str], rng: random.Random) -> list[str]:
        kept = [w for w in words if rng.random() >= self.cfg.p_delete]
        return kept or ([rng.choice(words)] if words else [])  # never return an empty example
