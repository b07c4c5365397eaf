"""Any configured data source written as shards, as ``mhc-shard`` runs it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mhc.api.build import build_datamodule
from mhc.api.config import ConfigLike, as_config
from mhc.data.shards import write_shards


def shard(config: ConfigLike = None, *, output: str | Path | None = None, output_dir: str | Path | None = None,
          config_dir: str | Path | None = None) -> dict[str, Any]:
    """Write the configured data's splits as shards under ``output`` (``data=shards
    data.path=<output>`` then streams them) and return their description."""
    cfg = as_config(config, "shard", output_dir, config_dir, output=output)
    datamodule = build_datamodule(cfg)
    splits = OmegaConf.to_container(cfg.splits) if OmegaConf.is_config(cfg.splits) else cfg.splits
    return write_shards(datamodule, cfg.output, splits=list(splits), image_format=cfg.image_format,
                        quality=cfg.quality, chunk_bytes=cfg.chunk_bytes, workers=cfg.workers, overwrite=cfg.overwrite)
