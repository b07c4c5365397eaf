"""Data modules and the encoded-label format they share."""

from mhc.data.datamodule import ScenesDataModule, TaskDataModule
from mhc.data.manifest import ManifestDataModule as ManifestDataModule, ManifestDataset as ManifestDataset
from mhc.data.torchvision_sets import CelebADataModule as CelebADataModule, Cifar100DataModule as Cifar100DataModule

__all__ = ["ScenesDataModule", "TaskDataModule"]
