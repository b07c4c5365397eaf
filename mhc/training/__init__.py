"""Training: the LightningModule, callbacks and schedules."""

from mhc.training.module import MultiHeadModule

__all__ = ["MultiHeadModule"]
