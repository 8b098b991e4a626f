from lmpretrain.callbacks.throughput import TokenThroughput

__all__ = ["TokenThroughput"]
