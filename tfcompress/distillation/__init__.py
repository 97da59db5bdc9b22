"""Teacher-student distillation inside `fit`, composable with pruning and QAT, for both Keras generations."""

from tfcompress.distillation.distiller import Distiller
from tfcompress.distillation.keras3 import Keras3Distiller
from tfcompress.distillation.losses import DistillationLoss, FeatureDistillation, LogitsDistillation
from tfcompress.scheduling import LinearSchedule

__all__ = ["DistillationLoss", "Distiller", "FeatureDistillation", "Keras3Distiller", "LinearSchedule", "LogitsDistillation"]
