from lmpretrain.objectives.causal_lm import CausalLMModule
from lmpretrain.objectives.contrastive import ContrastiveModule
from lmpretrain.objectives.electra import ElectraModule
from lmpretrain.objectives.masked_lm import MaskedLMModule
from lmpretrain.objectives.multitask import MultitaskModule
from lmpretrain.objectives.span_corruption import SpanCorruptionModule

__all__ = ["CausalLMModule", "ContrastiveModule", "ElectraModule", "MaskedLMModule", "MultitaskModule", "SpanCorruptionModule"]
