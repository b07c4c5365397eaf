"""Export of a checkpoint to a self-describing folder, as ``mhc-export`` runs it."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from mhc.api.config import ConfigLike, as_config
from mhc.export import default_folder, export_checkpoint, parse_formats


def export(config: ConfigLike = None, *, ckpt: str | Path | None = None, output: str | Path | None = None,
           config_dir: str | Path | None = None) -> Path:
    """Write checkpoint ``ckpt`` in the configured ``format`` (safetensors, onnx, torch_export,
    or a list) to ``output`` (default: ``export/`` in the checkpoint's run folder); the folder."""
    cfg = as_config(config, "export", None, config_dir, ckpt=ckpt, output=output)
    fmt = cfg.format
    formats = parse_formats(OmegaConf.to_container(fmt) if OmegaConf.is_config(fmt) else fmt)
    folder = Path(cfg.output) if cfg.output else default_folder(cfg.ckpt)
    return export_checkpoint(cfg.ckpt, folder, formats)
