from lmpretrain.callbacks.checkpoint import RunCheckpoint
from lmpretrain.callbacks.evaluation import EvaluationSuite
from lmpretrain.callbacks.preemption import Preemption
from lmpretrain.callbacks.throughput import TokenThroughput

__all__ = ["EvaluationSuite", "Preemption", "RunCheckpoint", "TokenThroughput"]
