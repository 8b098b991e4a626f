"""Compression and export of trained networks: int8 dynamic quantization and pruning (with the
change in held-out quality and size measured), the `transformers` layout (GPT-2, BERT) both ways,
and ONNX checked with onnxruntime. `python -m lmpretrain.export` (conf/export.yaml) runs them."""
