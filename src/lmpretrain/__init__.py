"""lmpretrain: Lightning + Hydra template for Transformer language-model pretraining."""

from lmpretrain import startup as _startup

_startup.configure_if_program()  # before anything heavy is imported: lmpretrain.startup says why

__version__ = "0.1.0"
