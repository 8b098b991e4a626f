"""`Seq2SeqDataModule`: text-to-text generation data (translation, summarization, dialogue) on the
labeled-data streaming core.

A record {source_field: str, target_field: str} is encoded in one of two layouts:

    encoder_decoder  input_ids = source[: block_size - 1] EOS         (the encoder, as span corruption)
                     labels = target[: max_target_tokens] EOS
                     decoder_input_ids = START labels[:-1]            (teacher forcing, shifted right)
    decoder          input_ids = source SEP target EOS                (one causal sequence)
                     labels = -100 on source SEP, then target EOS     (aligned with input_ids: the
                                                                       module shifts; loss on the target only)
                     prompt_ids = source SEP                          (what generation continues)

The source is cut first so that the target (at most `max_target_tokens`) keeps its room. START is
`start_token` when the tokenizer has it ([PAD], as T5 and `objectives/span_corruption.py`), else EOS;
SEP is `sep_token` when the tokenizer has it, else EOS. Every batch keeps the reference target text
(`targets`, a python list) for the generation metrics.
"""

from __future__ import annotations

import torch

from lmpretrain.data.labeled import LabeledDataModule
from lmpretrain.errors import ConfigError, DataError

LAYOUTS = ("encoder_decoder", "decoder")
ARCH_LAYOUTS = {"t5": "encoder_decoder", "gpt": "decoder"}  # a model.arch stands for its layout
EOS_TOKENS = ("[SEP]", "</s>", "<|endoftext|>")


class Seq2SeqDataModule(LabeledDataModule):
    """Source -> target text pairs (one jsonl(.gz) file per split, or one file with `split_by`).

    source_field, target_field: the record's fields.
    layout: encoder_decoder | decoder (or a model arch: t5 -> encoder_decoder, gpt -> decoder); it
        must match the network (the module checks).
    max_target_tokens: a longer target is cut to this many tokens (EOS not counted).
    eos_token: ends every target (null = the first of [SEP], </s>, <|endoftext|> the tokenizer has).
    sep_token: between source and target in the decoder layout (null or absent = EOS).
    start_token: the encoder-decoder's first decoder input (absent = EOS).
    The other arguments are `LabeledDataModule`'s (no labels).
    """

    families = ("seq2seq",)

    def __init__(self, family: str = "seq2seq", files: dict | None = None, source_field: str = "source",
                 target_field: str = "target", layout: str = "encoder_decoder", max_target_tokens: int = 64,
                 eos_token: str | None = None, sep_token: str | None = "[SEP]", start_token: str | None = "[PAD]",
                 text_field=None, text_b_field=None, label_field=None, labels=None, **kwargs):
        # text_field / text_b_field carry the source and target fields into the base class, which keys
        # its tokenizer cache on them.
        super().__init__(family, files, text_field=source_field, text_b_field=target_field, **kwargs)
        layout = ARCH_LAYOUTS.get(layout, layout)
        if layout not in LAYOUTS and layout in ("bert",):
            raise ConfigError("seq2seq generation needs a t5 (encoder-decoder) or gpt (decoder) model, not a BERT "
                              "encoder: pass model=t5_tiny or model=gpt_tiny (or a t5/gpt pretrained=)")
        if layout not in LAYOUTS:
            raise ConfigError(f"data.layout={layout!r} must be one of {LAYOUTS} (or a model arch {sorted(ARCH_LAYOUTS)})")
        if max_target_tokens < 1:
            raise ConfigError(f"data.max_target_tokens={max_target_tokens} must be >= 1")
        self.source_field, self.target_field, self.layout = source_field, target_field, layout
        self.max_target_tokens = max_target_tokens
        self.eos_token, self.sep_token, self.start_token = eos_token, sep_token, start_token

    # -- per-record hooks ------------------------------------------------------------------------
    def text_settings(self) -> tuple:
        return (*super().text_settings(), self.source_field, self.target_field)

    def record_texts(self, record: dict) -> list[str]:
        return [record[self.source_field], record[self.target_field]]

    def label_values(self, record: dict) -> None:
        return None

    def _special(self) -> None:
        super()._special()
        tok = self.tokenizer
        names = [self.eos_token] if self.eos_token else list(EOS_TOKENS)
        eos = next((tok.token_to_id(t) for t in names if t and tok.token_to_id(t) is not None), None)
        if eos is None:
            raise ConfigError(f"the tokenizer has none of {names} to end a target; set data.eos_token")
        self.eos_id = eos
        sep = tok.token_to_id(self.sep_token) if self.sep_token else None
        self.sep_id_seq = eos if sep is None else sep
        start = tok.token_to_id(self.start_token) if self.start_token else None
        self.start_id = eos if start is None else start
        self.collate_fn = seq2seq_collate(self.pad_id)

    def module_arguments(self) -> dict:
        return {"layout": self.layout, "eos_id": self.eos_id, "start_id": self.start_id, "pad_id": self.pad_id}

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode(self, record: dict) -> dict:
        missing = [f for f in (self.source_field, self.target_field) if f not in record]
        if missing:
            raise DataError(f"a record of {self.files} has no field(s) {missing} (has {sorted(record)}); set "
                            f"data.source_field / data.target_field")
        source, target = self._ids(str(record[self.source_field])), self._ids(str(record[self.target_field]))
        reference = str(record[self.target_field])
        if self.layout == "encoder_decoder":
            labels = target[: min(self.max_target_tokens, self.block_size - 1)] + [self.eos_id]
            input_ids = source[: self.block_size - 1] + [self.eos_id]
            return {"input_ids": input_ids, "labels": labels, "decoder_input_ids": [self.start_id] + labels[:-1],
                    "target": reference}
        target = target[: min(self.max_target_tokens, self.block_size - 3)] + [self.eos_id]
        prompt = source[: self.block_size - len(target) - 1] + [self.sep_id_seq]
        return {"input_ids": prompt + target, "labels": [-100] * len(prompt) + target, "prompt_ids": prompt,
                "target": reference}


def _pad(rows: list[list[int]], fill: int) -> torch.Tensor:
    T = max(len(r) for r in rows)
    return torch.tensor([r + [fill] * (T - len(r)) for r in rows])


def seq2seq_collate(pad_id: int):
    """Examples -> a batch, right-padded: input_ids (pad_id), attention_mask, labels (-100); with
    decoder_input_ids (pad_id) for the encoder-decoder layout, prompt_ids and prompt_mask for the
    decoder layout; `targets`: the reference texts (a list)."""

    def collate(examples: list[dict]) -> dict:
        out = {"input_ids": _pad([e["input_ids"] for e in examples], pad_id),
               "attention_mask": _pad([[1] * len(e["input_ids"]) for e in examples], 0),
               "labels": _pad([e["labels"] for e in examples], -100)}
        if "decoder_input_ids" in examples[0]:
            out["decoder_input_ids"] = _pad([e["decoder_input_ids"] for e in examples], pad_id)
        if "prompt_ids" in examples[0]:
            out["prompt_ids"] = _pad([e["prompt_ids"] for e in examples], pad_id)
            out["prompt_mask"] = _pad([[1] * len(e["prompt_ids"]) for e in examples], 0)
        out["targets"] = [e["target"] for e in examples]
        return out

    return collate
