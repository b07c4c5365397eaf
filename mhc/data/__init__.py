"""Data modules and the encoded-label format they share."""

from mhc.data.datamodule import ScenesDataModule, TaskDataModule
from mhc.data.manifest import ManifestDataModule as ManifestDataModule
from mhc.data.manifest import ManifestDataset as ManifestDataset
from mhc.data.torchvision_sets import CelebADataModule as CelebADataModule
from mhc.data.torchvision_sets import Cifar100DataModule as Cifar100DataModule

__all__ = ["ScenesDataModule", "TaskDataModule"]
