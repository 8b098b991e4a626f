"""Seeded black-box text attacks for robustness evaluation (bench/adversarial.py): each rewrites an
exact share of a text, drawn from a `random.Random` the caller seeds, so a given (seed, text) is
always attacked the same way and two models are scored on the very same attacked texts.

  char_noise(text, rate)       round(rate * letters) letters are each hit by one edit, chosen
                               uniformly: substitute (another letter, same case), insert (a random
                               letter after it), delete, or swap with the next letter (substitute
                               when that is no letter, the same one, or has an edit of its own). Each edit is one
                               Damerau-Levenshtein operation, so the edit distance is at most that
                               count (less only where two edits meet).
  word_substitution(text, rate) round(rate * words) words (alphabetic runs of >= 3 letters) are
                               replaced: by a neighbour from NEIGHBOURS (a small built-in table of
                               near-synonyms, weighted to e-mail/spam vocabulary) when the word is
                               in it, else by a typo'd variant (one keyboard-neighbour substitution,
                               adjacent swap, doubled or dropped inner letter). Case is kept.
                               Word boundaries and everything between words are left as they are.

These are cheap perturbations of the surface form, not optimised attacks: they measure how much a
classifier relies on exact spellings, which is what embedding-space adversarial training is
meant to smooth.
"""

from __future__ import annotations

import random
import re
import string

from lmpretrain.errors import ConfigError

_WORD = re.compile(r"[A-Za-z]{3,}")
_KEYBOARD = ["qwertyuiop", "asdfghjkl", "zxcvbnm"]
_NEAR = {}
for _r, _row in enumerate(_KEYBOARD):
    for _c, _ch in enumerate(_row):
        _NEAR[_ch] = "".join(
            _KEYBOARD[r][c] for r in (_r - 1, _r, _r + 1) if 0 <= r < 3
            for c in (_c - 1, _c, _c + 1) if 0 <= c < len(_KEYBOARD[r]) and (r, c) != (_r, _c))

# Near-synonyms (and chat spellings of a few function words) a human rewriting a message might use;
# a word maps to its neighbours only, not back.
NEIGHBOURS: dict[str, tuple[str, ...]] = {
    "free": ("complimentary", "gratis", "costless"), "money": ("cash", "funds", "dollars"),
    "click": ("press", "tap", "select"), "offer": ("deal", "proposal", "bargain"),
    "email": ("mail", "message", "note"), "buy": ("purchase", "order", "get"),
    "cheap": ("inexpensive", "affordable", "lowcost"), "order": ("request", "purchase", "buy"),
    "business": ("company", "firm", "enterprise"), "price": ("cost", "rate", "charge"),
    "now": ("today", "immediately", "instantly"), "get": ("obtain", "receive", "gain"),
    "new": ("fresh", "novel", "latest"), "best": ("finest", "top", "greatest"),
    "make": ("create", "produce", "earn"), "call": ("phone", "ring", "contact"),
    "information": ("info", "details", "data"), "receive": ("get", "obtain", "collect"),
    "please": ("kindly", "pls", "plz"), "time": ("moment", "period", "hour"),
    "people": ("folks", "persons", "individuals"), "help": ("assist", "aid", "support"),
    "need": ("require", "want", "must"), "want": ("desire", "wish", "need"),
    "send": ("mail", "forward", "transmit"), "list": ("roster", "register", "index"),
    "service": ("support", "assistance", "provision"), "product": ("item", "goods", "merchandise"),
    "credit": ("loan", "finance", "debt"), "save": ("keep", "spare", "preserve"),
    "home": ("house", "residence", "household"), "work": ("job", "labour", "employment"),
    "message": ("note", "mail", "letter"), "number": ("figure", "digit", "count"),
    "address": ("location", "contact", "domicile"), "company": ("firm", "business", "corporation"),
    "million": ("millions", "billion", "mil"), "win": ("earn", "gain", "secure"),
    "winner": ("victor", "champion", "awardee"), "guaranteed": ("assured", "certain", "ensured"),
    "risk": ("danger", "hazard", "gamble"), "investment": ("stake", "venture", "funding"),
    "income": ("earnings", "revenue", "salary"), "opportunity": ("chance", "opening", "occasion"),
    "remove": ("delete", "unsubscribe", "erase"), "subject": ("topic", "title", "heading"),
    "thanks": ("thx", "cheers", "ta"), "problem": ("issue", "trouble", "bug"),
    "think": ("believe", "reckon", "suppose"), "know": ("understand", "realize", "see"),
    "use": ("utilize", "employ", "apply"), "using": ("utilizing", "employing", "applying"),
    "file": ("document", "record", "attachment"), "system": ("setup", "platform", "machine"),
    "software": ("program", "application", "app"), "computer": ("machine", "box", "pc"),
    "version": ("release", "edition", "build"),
    "the": ("teh", "tha", "thee"), "and": ("und", "an", "nd"), "you": ("u", "ya", "yu"),
    "your": ("ur", "yer", "yours"), "this": ("dis", "thiss", "tihs"), "for": ("4", "fr", "fer"),
}


def _check_rate(name: str, rate: float) -> None:
    if not 0 <= rate <= 1:
        raise ConfigError(f"{name} rate={rate} must be in [0, 1]")


def _random_letter(rng: random.Random, like: str, other_than: str = "") -> str:
    letter = rng.choice([c for c in string.ascii_lowercase if c != other_than.lower()])
    return letter.upper() if like.isupper() else letter


def char_noise(text: str, rate: float, rng: random.Random) -> str:
    """round(rate * letters) letters of `text`, each hit by one insert/delete/swap/substitute."""
    _check_rate("char_noise", rate)
    letters = [i for i, c in enumerate(text) if c.isalpha()]
    chosen = sorted(rng.sample(letters, round(rate * len(letters))), reverse=True)  # right to left: indices stay valid
    hit, chars = set(chosen), list(text)
    for i in chosen:
        op = rng.choice(("substitute", "insert", "delete", "swap"))
        # never swap into a letter that has its own edit: one operation per chosen letter
        if op == "swap" and i + 1 not in hit and i + 1 < len(chars) and chars[i + 1].isalpha() and chars[i + 1] != chars[i]:
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
        elif op == "insert":
            chars.insert(i + 1, _random_letter(rng, chars[i]))
        elif op == "delete":
            del chars[i]
        else:
            chars[i] = _random_letter(rng, chars[i], other_than=chars[i])
    return "".join(chars)


def typo(word: str, rng: random.Random) -> str:
    """A misspelling of `word` (>= 3 letters) that differs from it: the first letter is kept."""
    for _ in range(8):
        i = rng.randrange(1, len(word))
        op = rng.choice(("keyboard", "swap", "double", "drop"))
        if op == "keyboard":
            near = _NEAR.get(word[i].lower(), string.ascii_lowercase)
            c = rng.choice(near)
            out = word[:i] + (c.upper() if word[i].isupper() else c) + word[i + 1:]
        elif op == "swap" and i + 1 < len(word):
            out = word[:i] + word[i + 1] + word[i] + word[i + 2:]
        elif op == "double":
            out = word[:i] + word[i] + word[i:]
        else:
            out = word[:i] + word[i + 1:]
        if out != word:
            return out
    return word + word[-1]


def _keep_case(original: str, new: str) -> str:
    if original.isupper() and len(original) > 1:
        return new.upper()
    if original[0].isupper():
        return new[:1].upper() + new[1:]
    return new


def word_substitution(text: str, rate: float, rng: random.Random) -> str:
    """round(rate * words) words replaced by a table neighbour, or else by a typo'd variant."""
    _check_rate("word_substitution", rate)
    spans = [m.span() for m in _WORD.finditer(text)]
    chosen = sorted(rng.sample(range(len(spans)), round(rate * len(spans))))
    out, last = [], 0
    for j in chosen:
        start, end = spans[j]
        word = text[start:end]
        neighbours = NEIGHBOURS.get(word.lower())
        new = _keep_case(word, rng.choice(neighbours)) if neighbours else typo(word, rng)
        out += [text[last:start], new]
        last = end
    return "".join(out) + text[last:]


ATTACKS = {"char": char_noise, "word": word_substitution}


def attack_texts(texts: list[str], kind: str, rate: float, seed: int) -> list[str]:
    """Every text attacked with its own generator, seeded by (seed, kind, its index): the same list
    and seed always give the same output, and one text's draw does not depend on the others."""
    if kind not in ATTACKS:
        raise ConfigError(f"attack kind={kind!r} must be one of {sorted(ATTACKS)}")
    return [ATTACKS[kind](t, rate, random.Random(f"{seed}:{kind}:{i}")) for i, t in enumerate(texts)]
