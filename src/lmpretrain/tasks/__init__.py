"""Downstream (fine-tuning) LightningModules: a pretrained network with a task head."""

from lmpretrain.tasks.base import FinetuneModule, read_pretrained
from lmpretrain.tasks.classification import SequenceClassificationModule
from lmpretrain.tasks.qa import ExtractiveQAModule
from lmpretrain.tasks.seq2seq import Seq2SeqModule
from lmpretrain.tasks.similarity import BiEncoderSimilarityModule, CrossEncoderRegressionModule
from lmpretrain.tasks.token_classification import TokenClassificationModule

__all__ = [
    "BiEncoderSimilarityModule",
    "CrossEncoderRegressionModule",
    "ExtractiveQAModule",
    "FinetuneModule",
    "Seq2SeqModule",
    "SequenceClassificationModule",
    "TokenClassificationModule",
    "read_pretrained",
]
