from lmpretrain.cleaning.normalize import (
    NormalizeConfig,
    fix_whitespace,
    normalize_text,
    remove_control_chars,
)
from lmpretrain.data.sentences import sentence_spans, split_sentences


def test_nfc_joins_combining_accent_and_nfkc_folds_compatibility_forms():
    assert normalize_text("Cafe\u0301", NormalizeConfig(form="NFC")) == "Caf\u00e9"
    assert normalize_text("\ufb01ne x\u00b2", NormalizeConfig(form="NFKC")) == "fine x2"
    assert normalize_text("\ufb01ne", NormalizeConfig(form="NFC")) == "\ufb01ne"


def test_control_characters_and_invisible_format_characters_are_removed():
    assert remove_control_chars("a\x00b\x07c\x85d\ufeffe\u200bf\tg\nh") == "abcdef\tg\nh"


def test_whitespace_repair():
    text = "  one\u00a0 two\t\tthree  \r\nfour\r\r\n\n\n\nfive \u3000six  "
    assert fix_whitespace(text) == "one two three\nfour\n\nfive six"


def test_disabled_normalization_returns_text_unchanged():
    assert normalize_text(" a\x00 ", NormalizeConfig(enabled=False)) == " a\x00 "


def test_sentences_respect_abbreviations_initials_and_decimals():
    text = 'Dr. Smith met J. R. R. Tolkien in 1950. He paid 3.50 dollars! "Really?" Yes.\n\nNew paragraph e.g. here'
    assert split_sentences(text) == [
        "Dr. Smith met J. R. R. Tolkien in 1950.",
        "He paid 3.50 dollars!",
        '"Really?"',
        "Yes.",
        "New paragraph e.g. here",
    ]


def test_sentence_spans_index_the_text():
    text = "First one. Second one?  Third."
    spans = sentence_spans(text)
    assert [text[a:b] for a, b in spans] == ["First one.", "Second one?", "Third."]
    assert spans[1][0] == 11 and spans[2][0] == 24
