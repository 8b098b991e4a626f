"""Each quality check on crafted documents whose measured value is known by hand."""

import pytest

from lmpretrain.cleaning.filters import (
    DocStats,
    QualityConfig,
    alpha_word_fraction,
    build_checks,
    digit_ratio,
    duplicate_fractions,
    duplicate_ngram_char_fraction,
    mean_word_length,
    quality_verdict,
    symbol_word_ratio,
    terminal_punctuation_fraction,
    top_ngram_char_fraction,
)

OFF = dict(min_words=None, max_words=None, min_mean_word_length=None, max_mean_word_length=None,
           max_symbol_word_ratio=None, max_digit_ratio=None, min_alpha_word_fraction=None,
           max_duplicate_line_fraction=None, max_duplicate_line_char_fraction=None,
           max_duplicate_paragraph_fraction=None, max_duplicate_paragraph_char_fraction=None,
           max_top_ngram_char_fraction={}, max_duplicate_ngram_char_fraction={},
           min_terminal_punctuation_fraction=None)


def only(**bounds) -> list:
    return build_checks(QualityConfig(**{**OFF, **bounds}))


def test_measures_on_known_inputs():
    assert mean_word_length(DocStats("ab abcd")) == 3.0
    assert symbol_word_ratio(DocStats("#tag #two and... more words")) == pytest.approx(3 / 5)
    assert digit_ratio(DocStats("ab 12")) == pytest.approx(2 / 4)
    assert alpha_word_fraction(DocStats("one 2 three 4")) == 0.5
    assert duplicate_fractions(["a line", "other", "a line", "a line"]) == (0.5, pytest.approx(12 / 23))
    assert terminal_punctuation_fraction(DocStats("Ends well.\nno end\nQuestion?\n\"quoted\"")) == 0.75


def test_top_ngram_fraction_counts_all_occurrences_of_the_most_frequent_repeated_ngram():
    # words: aa bb aa bb cc (10 chars); "aa bb" occurs twice -> 2 * 4 chars / 10
    assert top_ngram_char_fraction(DocStats("aa bb aa bb cc"), 2) == pytest.approx(0.8)
    assert top_ngram_char_fraction(DocStats("aa bb cc dd"), 2) == 0.0  # nothing repeats


def test_duplicate_ngram_fraction_counts_overlapping_words_once():
    # 5-gram "a b c d e" repeats; the words of both copies (10 of 11 words, 1 char each) are covered
    text = "a b c d e a b c d e z"
    assert duplicate_ngram_char_fraction(DocStats(text), 5) == pytest.approx(10 / 11)
    assert duplicate_ngram_char_fraction(DocStats("a b c d e f g h i j"), 5) == 0.0


@pytest.mark.parametrize(
    "bounds, text, reason",
    [
        (dict(min_words=3), "two words", "min_words"),
        (dict(max_words=15), " ".join(["word"] * 16), "max_words"),
        (dict(min_mean_word_length=3.0), "a an to it", "min_mean_word_length"),
        (dict(max_mean_word_length=10.0), "supercalifragilistic antidisestablishmentarian", "max_mean_word_length"),
        (dict(max_symbol_word_ratio=0.1), "#one #two three four five", "max_symbol_word_ratio"),
        (dict(max_digit_ratio=0.3), "call 555 1234 5678 now", "max_digit_ratio"),
        (dict(min_alpha_word_fraction=0.8), "1 2 3 four", "min_alpha_word_fraction"),
        (dict(max_duplicate_line_fraction=0.3), "same\nsame\nsame\nother", "max_duplicate_line_fraction"),
        (dict(max_duplicate_line_char_fraction=0.2), "long repeated line\nlong repeated line\nx",
         "max_duplicate_line_char_fraction"),
        (dict(max_duplicate_paragraph_fraction=0.3), "p one\n\np one\n\np two", "max_duplicate_paragraph_fraction"),
        (dict(max_duplicate_paragraph_char_fraction=0.2), "para\n\npara\n\nx", "max_duplicate_paragraph_char_fraction"),
        (dict(max_top_ngram_char_fraction={2: 0.2}), "buy now buy now buy now today", "max_top_2gram_char_fraction"),
        (dict(max_duplicate_ngram_char_fraction={5: 0.15}), "a b c d e a b c d e z", "max_duplicate_5gram_char_fraction"),
        (dict(min_terminal_punctuation_fraction=0.5), "no end\nnone here\nfine.", "min_terminal_punctuation_fraction"),
    ],
)
def test_each_check_drops_its_crafted_document_and_passes_a_clean_one(bounds, text, reason):
    verdict = quality_verdict(text, only(**bounds))
    assert not verdict.keep and verdict.reason == reason
    clean = "The committee approved the budget after a long debate.\nMembers voted on Tuesday."
    assert quality_verdict(clean, only(**bounds)).keep


def test_a_switched_off_check_keeps_everything():
    assert quality_verdict("x", only()).keep
    assert build_checks(QualityConfig(enabled=False)) == []


def test_gopher_defaults_drop_short_documents():
    verdict = quality_verdict("A short note.", build_checks(QualityConfig()))
    assert verdict.reason == "min_words" and verdict.value == 3
