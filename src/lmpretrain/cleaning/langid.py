"""Language identification with py3langid (langid.py's maintained fork).

Its naive-Bayes model (over 90 languages) ships inside the wheel, so nothing is downloaded at run time.
It needs ~0.7 s to load, so each process loads it once (`_identifier`) and reuses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import NamedTuple

from lmpretrain.errors import ConfigError


@dataclass
class LangIdConfig:
    enabled: bool = True
    languages: list[str] = field(default_factory=lambda: ["en"])  # ISO 639-1 codes to keep; [] keeps all
    min_confidence: float = 0.0  # normalized probability of the top language
    max_chars: int = 1000  # the head of a document decides its language; long texts cost more
    min_chars: int = 0  # shorter documents are not judged (language "und", kept): a few words
    #                     ("All: Come, come.") do not identify a language and get misread as Latin

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ConfigError(f"langid.min_confidence={self.min_confidence} must lie in [0, 1]")
        unknown = sorted(set(self.languages) - set(supported_languages())) if self.enabled else []
        if unknown:
            raise ConfigError(
                f"langid.languages has codes py3langid does not know: {unknown}; use ISO 639-1 codes such as 'en', 'es'"
            )


class Language(NamedTuple):
    code: str
    confidence: float


@lru_cache(maxsize=1)
def _identifier():
    try:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise ConfigError("langid needs py3langid: pip install py3langid (or set langid.enabled=false)") from e
    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def supported_languages() -> list[str]:
    return sorted(set(_identifier().nb_classes))


UNDETERMINED = Language("und", 0.0)


def detect_language(text: str, max_chars: int = 1000, min_chars: int = 0) -> Language:
    if len(text) < min_chars:
        return UNDETERMINED
    code, prob = _identifier().classify(text[:max_chars])
    return Language(code, float(prob))


def keep_language(lang: Language, cfg: LangIdConfig) -> bool:
    if lang is UNDETERMINED:
        return True
    return (not cfg.languages or lang.code in cfg.languages) and lang.confidence >= cfg.min_confidence
