"""MLM corruption statistics: 15% selection, 80/10/10 split, special tokens never touched."""

import math

import pytest
import torch
from tokenizers import Tokenizer

from conftest import SHAKESPEARE
from lmpretrain.objectives.masked_lm import MaskedLMModule, MaskingConfig, mask_tokens, word_start_table
from lmpretrain.tokenizers import TokenizerConfig, train_tokenizer

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
V, MASK = 1000, 4


def within_3_sigma(count: int, n: int, p: float) -> bool:
    return abs(count / n - p) <= 3 * math.sqrt(p * (1 - p) / n)


def synthetic(n_rows=100, length=1000, seed=0):
    """100k tokens, ~10% of them special (ids 0-4), the rest ordinary ids 5..V-1."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (n_rows, length), generator=g)
    specials = torch.rand(n_rows, length, generator=g) < 0.1
    return torch.where(specials, torch.randint(0, 5, (n_rows, length), generator=g), ids)


def test_selection_and_80_10_10_within_3_sigma_over_100k_tokens():
    ids = synthetic()
    maskable = ids >= 5
    corrupted, labels = mask_tokens(ids, maskable, MASK, torch.arange(5, V), MaskingConfig(),
                                    torch.Generator().manual_seed(1))
    selected = labels != -100
    n_maskable, n_sel = int(maskable.sum()), int(selected.sum())
    assert ids.numel() == 100_000
    assert within_3_sigma(n_sel, n_maskable, 0.15), n_sel / n_maskable
    assert not (selected & ~maskable).any(), "a special token was selected"
    assert torch.equal(corrupted[~selected], ids[~selected]), "an unselected token changed"
    assert torch.equal(labels[selected], ids[selected])
    as_mask = selected & (corrupted == MASK)
    kept = selected & (corrupted == ids)
    randomized = selected & (corrupted != MASK) & (corrupted != ids)
    # a random draw equal to the original reads as "kept": shift the expectations by 1/995
    p_same = 1 / (V - 5)
    assert within_3_sigma(int(as_mask.sum()), n_sel, 0.8)
    assert within_3_sigma(int(randomized.sum()), n_sel, 0.1 * (1 - p_same))
    assert within_3_sigma(int(kept.sum()), n_sel, 0.1 + 0.1 * p_same)
    assert (corrupted[randomized] >= 5).all(), "a random replacement drew a special token"


def test_whole_word_masking_selects_all_pieces_of_a_word_or_none():
    ids = synthetic(n_rows=50)
    g = torch.Generator().manual_seed(2)
    starts = torch.rand(ids.shape, generator=g) < 0.5  # words of ~2 pieces
    starts[:, 0] = True
    maskable = ids >= 5
    _, labels = mask_tokens(ids, maskable, MASK, torch.arange(5, V), MaskingConfig(whole_word=True),
                            torch.Generator().manual_seed(3), word_starts=starts)
    selected = labels != -100
    word = starts.long().cumsum(1) - 1
    n_words = n_sel_words = 0
    for row in range(ids.size(0)):
        for w in torch.unique(word[row]):
            pieces = (word[row] == w) & maskable[row]
            if pieces.any():
                n_words += 1
                chosen = selected[row][pieces]
                assert chosen.all() or not chosen.any(), "a word was partly selected"
                n_sel_words += int(chosen.all())
    assert within_3_sigma(n_sel_words, n_words, 0.15), n_sel_words / n_words


def test_masking_is_a_function_of_the_seed():
    ids = synthetic(n_rows=4)
    args = (ids, ids >= 5, MASK, torch.arange(5, V), MaskingConfig())
    a = mask_tokens(*args, torch.Generator().manual_seed(7))
    b = mask_tokens(*args, torch.Generator().manual_seed(7))
    c = mask_tokens(*args, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])


@pytest.fixture(scope="module")
def wordpiece() -> Tokenizer:
    cfg = TokenizerConfig(kind="wordpiece", vocab_size=600, special_tokens=SPECIALS, eos_token="[SEP]",
                          unk_token="[UNK]", lowercase=True)
    return train_tokenizer(cfg, iter(SHAKESPEARE.read_text().splitlines()[:4000]))


def test_module_never_masks_the_tokenizers_special_tokens(wordpiece):
    module = MaskedLMModule({"arch": "bert", "vocab_size": wordpiece.get_vocab_size(), "n_layer": 1})
    module.connect(tokenizer_json=wordpiece.to_str())
    text = " ".join(SHAKESPEARE.read_text().split()[:3000])
    body = torch.tensor(wordpiece.encode(text, add_special_tokens=False).ids[:3000])
    rows = body[: 30 * 90].view(30, 90)
    cls, sep, pad = (wordpiece.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]"))
    ids = torch.cat([torch.full((30, 1), cls), rows, torch.full((30, 1), sep), torch.full((30, 8), pad)], 1)
    attention = (ids != pad).long()
    specials = torch.isin(ids, torch.tensor([wordpiece.token_to_id(t) for t in SPECIALS]))
    for seed in range(20):
        corrupted, labels = module.losses["mlm"].corrupt({"input_ids": ids, "attention_mask": attention}, seed)
        assert not (labels[specials] != -100).any()
        assert torch.equal(corrupted[specials], ids[specials])


def test_word_starts_follow_wordpiece_continuations(wordpiece):
    table = word_start_table(wordpiece)
    vocab = wordpiece.get_vocab()
    for token, i in vocab.items():
        assert bool(table[i]) == (not token.startswith("##")), token
