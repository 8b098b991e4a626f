from lmpretrain.callbacks.averaging import EMA
from lmpretrain.callbacks.checkpoint import RunCheckpoint
from lmpretrain.callbacks.console import ParamSummary, StepProgressBar
from lmpretrain.callbacks.curves import TrainingCurves
from lmpretrain.callbacks.evaluation import EvaluationSuite
from lmpretrain.callbacks.preemption import Preemption
from lmpretrain.callbacks.reports import ClassificationReport, SampleGenerations
from lmpretrain.callbacks.throughput import TokenThroughput

__all__ = ["EMA", "ClassificationReport", "EvaluationSuite", "ParamSummary", "Preemption", "RunCheckpoint",
           "SampleGenerations", "StepProgressBar", "TokenThroughput", "TrainingCurves"]
