"""Training: the LightningModules (multi-head training, masked-modeling pretraining), the
multi-task step, callbacks, schedules, speed options and precision defaults."""

from mhc.training.module import MultiHeadModule
from mhc.training.pretraining import PretrainModule

__all__ = ["MultiHeadModule", "PretrainModule"]
