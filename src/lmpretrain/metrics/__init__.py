from lmpretrain.metrics.perplexity import TokenNLL

__all__ = ["TokenNLL"]
