import pytest

from lmpretrain.cleaning.langid import LangIdConfig, detect_language, keep_language
from lmpretrain.errors import ConfigError


def test_detects_english_and_spanish_offline():
    assert detect_language("The package provides a library for parsing configuration files.").code == "en"
    assert detect_language("En el principio creó Dios los cielos y la tierra.").code == "es"


def test_keeps_only_configured_languages():
    cfg = LangIdConfig(languages=["en"])
    assert keep_language(detect_language("This is clearly an English sentence about software."), cfg)
    assert not keep_language(detect_language("Y la tierra estaba desordenada y vacía."), cfg)


def test_short_texts_stay_undetermined_and_pass():
    cfg = LangIdConfig(languages=["en"], min_chars=50)
    lang = detect_language("Noble Marcius!", min_chars=cfg.min_chars)
    assert lang.code == "und" and keep_language(lang, cfg)


def test_unknown_language_code_is_a_config_error():
    with pytest.raises(ConfigError, match="langid.languages"):
        LangIdConfig(languages=["english"])
