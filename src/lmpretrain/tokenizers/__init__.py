from lmpretrain.tokenizers.build import (
    TokenizerConfig,
    build_char_tokenizer,
    load_or_train_tokenizer,
    train_tokenizer,
)

__all__ = ["TokenizerConfig", "build_char_tokenizer", "load_or_train_tokenizer", "train_tokenizer"]
