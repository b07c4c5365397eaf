"""Atomic checkpoint writes: a crash or a full disk mid-save never harms the previous file."""

from __future__ import annotations

import os
from typing import Any

from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from mhc.io import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves to a temporary file in the target folder, fsyncs it, then renames it into place."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)
