"""Unicode normalization, control-character removal and whitespace repair.

Runs first, so every later step (language id, filters, hashes for dedup) sees one canonical
spelling of the same text: `é` as one code point, no stray NULs or zero-width spaces, one space
between words, at most one blank line between paragraphs.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from lmpretrain.errors import ConfigError

FORMS = ("NFC", "NFKC")


@dataclass
class NormalizeConfig:
    enabled: bool = True
    form: str | None = "NFC"  # NFC keeps compatibility characters (ﬁ, ²); NFKC folds them
    remove_control: bool = True
    fix_whitespace: bool = True

    def __post_init__(self) -> None:
        if self.form is not None and self.form.upper() not in FORMS:
            raise ConfigError(f"normalize.form={self.form!r} is unknown; use one of {FORMS} or null")


def _control_table() -> dict[int, None]:
    """C0/C1 controls except tab and newline, plus invisible format characters that only confuse
    word splitting and hashing (BOM, zero-width space, soft hyphen, word joiner)."""
    drop = [c for c in range(0x20) if chr(c) not in "\t\n\r"] + list(range(0x7F, 0xA0))
    drop += [0xFEFF, 0x200B, 0x00AD, 0x2060]
    return dict.fromkeys(drop)


_CONTROL = _control_table()
# Every Unicode space separator (category Zs: NBSP, en/em/thin spaces, ideographic space) -> ' '.
_ZS = [0xA0, 0x1680, *range(0x2000, 0x200B), 0x202F, 0x205F, 0x3000]
_SPACES: dict[int, str] = {c: " " for c in _ZS}
_SPACES.update({ord("\t"): " ", 0x2028: "\n", 0x2029: "\n\n"})
_RUN_OF_SPACES = re.compile(r" {2,}")
_SPACE_AROUND_NEWLINE = re.compile(r" *\n *")
_MANY_NEWLINES = re.compile(r"\n{3,}")


def remove_control_chars(text: str) -> str:
    return text.translate(_CONTROL)


def fix_whitespace(text: str) -> str:
    """CRLF/CR -> LF, exotic spaces and tabs -> one space, no spaces at line ends, at most one
    blank line in a row, no leading/trailing whitespace."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").translate(_SPACES)
    text = _RUN_OF_SPACES.sub(" ", text)
    text = _SPACE_AROUND_NEWLINE.sub("\n", text)
    return _MANY_NEWLINES.sub("\n\n", text).strip()


def normalize_text(text: str, cfg: NormalizeConfig) -> str:
    if not cfg.enabled:
        return text
    if cfg.form:
        text = unicodedata.normalize(cfg.form.upper(), text)
    if cfg.remove_control:
        text = remove_control_chars(text)
    if cfg.fix_whitespace:
        text = fix_whitespace(text)
    return text
