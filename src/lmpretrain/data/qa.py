"""`QADataModule`: extractive question answering (SQuAD layout) on the labeled-data streaming core.

A record {id, context, question, answers: {text: [..], answer_start: [..]}} becomes one or more
*windows*: a context longer than the model is cut into overlapping pieces, each read together with
the question,

    [CLS] question [SEP] context tokens [s, s + budget) [SEP]      (token types 0 ... 0 1 ... 1)

where budget = block_size - question - 3 specials and s = 0, stride, 2 * stride, ... (stride =
`doc_stride`, at most the budget, so windows always cover the context; the last window ends at the
context's end). A window's targets are the token positions of the first gold answer when the answer
lies wholly inside its context part, else both 0 (the [CLS], "not in this window"). Each window keeps
the character offsets of its context tokens (the tokenizer's `Encoding.offsets`, which index the
original text) so a predicted token span maps back to a substring of the original context.

`match_features=true` adds DrQA's exact-match feature (Chen et al. 2017): `match` is 1 for a context
token whose id also occurs in the question, else 0, and `ExtractiveQAModule` adds a learned
embedding of it to the token embeddings. A small encoder trained from scratch (or after a CPU-sized
pretraining) finds the asked-for entry by this flag long before it learns to compare question and
context tokens in attention (README, "Does pretraining pay off?").

Batching is by record: a batch holds `batch_size` questions and all their windows, so the module
can pick each question's best span over its windows within one batch.
"""

from __future__ import annotations

import functools
import hashlib

import torch

from lmpretrain.data.labeled import LabeledDataModule, LabeledExamples
from lmpretrain.errors import ConfigError, DataError


def window_starts(n_tokens: int, budget: int, stride: int) -> list[int]:
    """Start token of each window over `n_tokens` context tokens: 0, stride, ... until a window
    reaches the end (one window, possibly empty, for a context that fits)."""
    starts = [0]
    while starts[-1] + budget < n_tokens:
        starts.append(starts[-1] + stride)
    return starts


def char_span_to_tokens(offsets: list[tuple[int, int]], start: int, end: int) -> tuple[int, int] | None:
    """(first, last) token index whose characters overlap [start, end), or None (no token does, e.g.
    an answer of whitespace only)."""
    inside = [i for i, (a, b) in enumerate(offsets) if a < end and b > start and b > a]
    return (inside[0], inside[-1]) if inside else None


def _kept(seed: int, key: str, fraction: float) -> bool:
    """A seeded coin with P(True) = fraction, the same for the same key in every epoch and run."""
    if fraction >= 1:
        return True
    h = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big")
    return h / 2**64 < fraction


class QADataModule(LabeledDataModule):
    """Extractive QA data (SQuAD layout, one jsonl(.gz) file per split).

    question_field, context_field, answers_field, id_field: the record's fields; `answers` is
        {text: [str, ...], answer_start: [int, ...]} (character offsets into the context). The first
        answer is the training target; all of them are the references for exact match / F1.
    max_question_tokens: a longer question is cut to this many tokens.
    doc_stride: tokens between the starts of consecutive windows of a long context (BERT's
        doc_stride; the overlap is budget - doc_stride). Capped at the window's context budget.
    match_features: add `match` (1 = this context token's id occurs in the question) to every window,
        and hand `match_features=True` to the task module, which embeds it.
    negative_windows: the fraction of training windows *without* the answer that are kept, with
        target [CLS] (1.0 = all, as BERT; 0.0 = only windows holding the answer). Which ones is a
        seeded function of the record and window, so the choice is the same every epoch and on
        resume. Validation and test always read every window. A training record whose answer fits
        no window keeps at least its first window.
    The other arguments are `LabeledDataModule`'s (`text_field` / `text_b_field` / `label_field` and
    `labels` are not used: QA has no labels).
    """

    families = ("extractive_qa",)

    def __init__(self, family: str = "extractive_qa", files: dict | None = None, question_field: str = "question",
                 context_field: str = "context", answers_field: str = "answers", id_field: str = "id",
                 max_question_tokens: int = 64, doc_stride: int = 64, negative_windows: float = 1.0,
                 match_features: bool = False, text_field=None, text_b_field=None, label_field=None, labels=None, **kwargs):
        # text_field / text_b_field carry the context and question fields into the base class, which
        # keys its tokenizer cache on them.
        super().__init__(family, files, text_field=context_field, text_b_field=question_field, **kwargs)
        if max_question_tokens < 1 or doc_stride < 1 or not 0 <= negative_windows <= 1:
            raise ConfigError("data.max_question_tokens and data.doc_stride must be >= 1, "
                              "data.negative_windows in [0, 1]")
        self.question_field, self.context_field = question_field, context_field
        self.answers_field, self.id_field = answers_field, id_field
        self.max_question_tokens, self.doc_stride, self.negative_windows = max_question_tokens, doc_stride, negative_windows
        self.match_features = bool(match_features)

    def module_arguments(self) -> dict:
        return {"match_features": self.match_features}

    # -- per-record hooks ------------------------------------------------------------------------
    def text_settings(self) -> tuple:
        return (*super().text_settings(), self.question_field, self.context_field)

    def record_texts(self, record: dict) -> list[str]:
        return [record[self.question_field], record[self.context_field]]

    def label_values(self, record: dict) -> None:
        return None

    def _fields(self, record: dict) -> tuple[str, str, list[str], list[int]]:
        missing = [f for f in (self.question_field, self.context_field, self.answers_field) if f not in record]
        if missing:
            raise DataError(f"a record of {self.files} has no field(s) {missing} (has {sorted(record)}); set "
                            f"data.question_field / data.context_field / data.answers_field")
        answers = record[self.answers_field]
        if not isinstance(answers, dict) or not {"text", "answer_start"} <= set(answers):
            raise DataError(f"{self.answers_field!r} must be {{text: [...], answer_start: [...]}}, got {answers!r:.200}")
        texts, starts = list(answers["text"]), [int(s) for s in answers["answer_start"]]
        if not texts or len(texts) != len(starts):
            raise DataError(f"record {record.get(self.id_field)!r}: answers need as many texts as starts, at least one")
        context = record[self.context_field]
        if context[starts[0]:starts[0] + len(texts[0])] != texts[0]:
            raise DataError(f"record {record.get(self.id_field)!r}: the answer {texts[0]!r:.80} is not at character "
                            f"{starts[0]} of the context")
        return record[self.question_field], context, texts, starts

    def encode(self, record: dict, train: bool = False) -> list[dict]:
        """One record -> its windows (see the module docstring). Each window: input_ids,
        token_type_ids, attention_mask, start/end_positions, context_start (position of its first
        context token), offsets (character span of each of its context tokens) and the record's id,
        context and answers."""
        question, context, texts, starts = self._fields(record)
        tok = self.tokenizer
        q_ids = tok.encode(question, add_special_tokens=False).ids[: self.max_question_tokens]
        enc = tok.encode(context, add_special_tokens=False)
        c_ids, offsets = enc.ids, [tuple(o) for o in enc.offsets]
        lead = [self.cls_id] if self.cls_id is not None else []
        sep = [self.sep_id] if self.sep_id is not None else []
        head = lead + q_ids + sep
        budget = self.block_size - len(head) - len(sep)
        if budget < 1:
            raise ConfigError(f"data.block_size={self.block_size} leaves no room for the context after a "
                              f"{len(q_ids)}-token question; lower data.max_question_tokens")
        stride = min(self.doc_stride, budget)
        gold = char_span_to_tokens(offsets, starts[0], starts[0] + len(texts[0]))
        key = str(record.get(self.id_field, question))
        if self.match_features:  # once per record: overlapping windows slice the same flags
            asked = set(q_ids)
            flags = [int(t in asked) for t in c_ids]
        windows = []
        for k, s in enumerate(window_starts(len(c_ids), budget, stride)):
            e = min(s + budget, len(c_ids))
            inside = gold is not None and s <= gold[0] and gold[1] < e
            start = end = 0
            if inside:
                start, end = len(head) + gold[0] - s, len(head) + gold[1] - s
            ids = head + c_ids[s:e] + sep
            windows.append({
                "input_ids": ids,
                "token_type_ids": [0] * len(head) + [1] * (len(ids) - len(head)),
                "attention_mask": [1] * len(ids),
                "start_positions": start,
                "end_positions": end,
                "context_start": len(head),
                "offsets": offsets[s:e],
                "id": key, "context": context, "answers": texts,
                "_keep": inside or _kept(self.seed, f"{key}:{k}", self.negative_windows),
            })
            if self.match_features:
                windows[-1]["match"] = [0] * len(head) + flags[s:e] + [0] * len(sep)
        if train:
            kept = [w for w in windows if w["_keep"]] or windows[:1]
            windows = kept
        for w in windows:
            del w["_keep"]
        return windows

    def _special(self) -> None:
        super()._special()
        # A tokenizer.json may carry truncation / padding (HF exports often do: 128 tokens, padded),
        # which would cut the context silently and add [PAD] "context" tokens; windows do both here.
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.collate_fn = qa_collate(self.pad_id)

    def dataset(self, part: str) -> LabeledExamples:
        ds = super().dataset(part)
        ds.encode = functools.partial(self.encode, train=part == "train")
        return ds


def qa_collate(pad_id: int):
    """Records (each a list of windows) -> one batch of all their windows, padded: tensors
    input_ids, token_type_ids, attention_mask, context_mask (the context tokens a span may use),
    start_positions, end_positions, example (which record each window belongs to), match (when the
    windows have it: `match_features`); python lists
    context_start, offsets (per window) and ids, contexts, answers (per record)."""

    def collate(records: list[list[dict]]) -> dict:
        windows = [w for r in records for w in r]
        T = max(len(w["input_ids"]) for w in windows)
        out = {}
        for key, fill in (("input_ids", pad_id), ("token_type_ids", 0), ("attention_mask", 0)):
            out[key] = torch.tensor([w[key] + [fill] * (T - len(w[key])) for w in windows])
        if "match" in windows[0]:
            out["match"] = torch.tensor([w["match"] + [0] * (T - len(w["match"])) for w in windows])
        context_mask = torch.zeros(len(windows), T, dtype=torch.bool)
        for i, w in enumerate(windows):
            context_mask[i, w["context_start"]: w["context_start"] + len(w["offsets"])] = True
        out["context_mask"] = context_mask
        for key in ("start_positions", "end_positions"):
            out[key] = torch.tensor([w[key] for w in windows])
        out["example"] = torch.tensor([r for r, ws in enumerate(records) for _ in ws])
        out["context_start"] = [w["context_start"] for w in windows]
        out["offsets"] = [w["offsets"] for w in windows]
        out["ids"] = [r[0]["id"] for r in records]
        out["contexts"] = [r[0]["context"] for r in records]
        out["answers"] = [r[0]["answers"] for r in records]
        return out

    return collate
