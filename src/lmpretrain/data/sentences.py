"""Rule-based sentence splitting (for sentence-level objectives such as NSP/SOP), used at training
time (`data.sentence_pairs`) and by prepare (the shards' sentence index).

A sentence ends at `.`, `!`, `?` or `…` (plus closing quotes/brackets) followed by whitespace and
a capital letter, digit or opening quote, or at a blank line. Known abbreviations ("Dr.", "e.g.")
and single-letter initials ("J. R. R.") do not end a sentence. Spans index into the text, so the
tokenizer's character offsets can turn them into token boundaries without re-tokenizing
(`sentence_ends`).
"""

from __future__ import annotations

import re

import numpy as np

ABBREVIATIONS = frozenset(
    ["mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "cf", "al", "fig", "no", "vol", "approx", "dept", "est", "inc", "ltd", "co", "corp", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec"]
)

# Candidate boundary: terminal mark(s), optional closing quotes/brackets, whitespace, then the
# start of the next sentence (looked ahead, not consumed).
_BOUNDARY = re.compile(r"""[.!?…]+["'”’)\]]*(\s+)(?=["'“‘(\[]?[A-Z0-9À-ÖØ-Þ])""")
_BLANK_LINE = re.compile(r"\n\s*\n")
_LAST_WORD = re.compile(r"(\S+)$")


def _is_abbreviation(before: str) -> bool:
    match = _LAST_WORD.search(before)
    if match is None:
        return False
    word = match.group(1).rstrip(".").lower().lstrip("(\"'“‘")
    return word in ABBREVIATIONS or (len(word) == 1 and word.isalpha())


def _paragraph_spans(text: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for m in _BLANK_LINE.finditer(text):
        spans.append((start, m.start()))
        start = m.end()
    spans.append((start, len(text)))
    return [(a, b) for a, b in spans if text[a:b].strip()]


def sentence_spans(text: str, min_chars: int = 1) -> list[tuple[int, int]]:
    """(start, end) character spans of the sentences, whitespace between them excluded."""
    spans: list[tuple[int, int]] = []
    for para_start, para_end in _paragraph_spans(text):
        start = para_start
        for m in _BOUNDARY.finditer(text, para_start, para_end):
            end = m.start(1)
            if _is_abbreviation(text[start:end]) or end - start < min_chars:
                continue
            spans.append((start, end))
            start = m.end(1)
        spans.append((start, para_end))
    return spans


def split_sentences(text: str, min_chars: int = 1) -> list[str]:
    return [text[a:b] for a, b in sentence_spans(text, min_chars)]


def sentence_ends(encoding, text: str, n_tokens: int) -> np.ndarray:
    """Token offsets where the text's sentences end, via the tokens' character offsets (`encoding`
    is a `tokenizers.Encoding` of `text`): a token belongs to the sentence in which it starts. The
    last end is `n_tokens` (EOS included)."""
    starts = np.array([a for a, _ in encoding.offsets], dtype=np.int64)
    ends = np.searchsorted(starts, [b for _, b in sentence_spans(text)[:-1]], side="left")
    return np.unique(np.r_[ends[ends > 0], n_tokens]).astype(np.int64)
