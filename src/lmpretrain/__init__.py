"""lmpretrain: Lightning + Hydra template for Transformer language-model pretraining."""

__version__ = "0.1.0"
