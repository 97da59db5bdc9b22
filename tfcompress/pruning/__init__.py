"""Magnitude pruning scheduled inside `fit` (tfmot's wrappers, fit-aware schedules)."""

from tfcompress.pruning.channels import channel_summary, count_macs
from tfcompress.pruning.prune import prune
from tfcompress.pruning.schedules import ConstantSparsity, PolynomialDecay
from tfcompress.pruning.wrapper import PruneLowMagnitude
