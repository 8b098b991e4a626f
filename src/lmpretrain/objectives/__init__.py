from lmpretrain.objectives.causal_lm import CausalLMModule

__all__ = ["CausalLMModule"]
