from lmpretrain.data.packed import PackedBlocks
from lmpretrain.data.text import PackedTextDataModule

__all__ = ["PackedBlocks", "PackedTextDataModule"]
