"""Teacher-student distillation inside `fit`, composable with pruning and QAT."""

from tfcompress.distillation.distiller import Distiller
from tfcompress.distillation.losses import DistillationLoss, FeatureDistillation, LogitsDistillation
from tfcompress.scheduling import LinearSchedule

__all__ = ["DistillationLoss", "Distiller", "FeatureDistillation", "LinearSchedule", "LogitsDistillation"]
