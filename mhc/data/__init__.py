"""Data modules and the encoded-label format they share."""

from mhc.data.datamodule import ScenesDataModule, TaskDataModule

__all__ = ["ScenesDataModule", "TaskDataModule"]
