"""mhc: multi-head classification. One shared backbone, one head per task, trained together.

>>> import mhc
>>> model = mhc.load("outputs/train/<run>/checkpoints/last.ckpt")   # doctest: +SKIP
>>> model.predict(["scene.png"])["shape"].labels                     # doctest: +SKIP
['circle']
"""

from mhc.errors import CheckpointError, ConfigError, DataError, MhcError
from mhc.io import load, save_export
from mhc.model.net import MultiHeadNet, Preprocess, TaskPrediction
from mhc.tasks import TaskSpec

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "MhcError",
    "MultiHeadNet",
    "Preprocess",
    "TaskPrediction",
    "TaskSpec",
    "load",
    "save_export",
]
__version__ = "0.1.0"
