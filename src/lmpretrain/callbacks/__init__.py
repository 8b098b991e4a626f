from lmpretrain.callbacks.evaluation import EvaluationSuite
from lmpretrain.callbacks.throughput import TokenThroughput

__all__ = ["EvaluationSuite", "TokenThroughput"]
