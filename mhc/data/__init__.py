"""Data modules and the encoded-label format they share."""

from mhc.data.datamodule import ScenesDataModule, TaskDataModule
from mhc.data.hf import HFDataModule
from mhc.data.manifest import ManifestDataModule, ManifestDataset
from mhc.data.multisource import MultiSourceDataModule
from mhc.data.sequences import SequencesDataModule
from mhc.data.shards import ShardsDataModule
from mhc.data.torchvision_sets import CelebADataModule, Cifar100DataModule

__all__ = [
    "CelebADataModule",
    "Cifar100DataModule",
    "HFDataModule",
    "ManifestDataModule",
    "ManifestDataset",
    "MultiSourceDataModule",
    "ScenesDataModule",
    "SequencesDataModule",
    "ShardsDataModule",
    "TaskDataModule",
]
