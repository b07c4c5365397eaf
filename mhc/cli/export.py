"""``mhc-export ckpt=PATH``: write a checkpoint as a self-describing export folder.

The folder (``output``, by default ``<run folder>/export``) holds the chosen model files
(``format``: ``safetensors``, ``onnx``, ``torch_export``, or a list), ``config.json`` and a
``README.md`` model card. Examples::

    mhc-export ckpt=outputs/train/<date>/checkpoints/last.ckpt
    mhc-export ckpt=... format=[safetensors,onnx,torch_export] output=exported/
"""

from __future__ import annotations

from omegaconf import DictConfig

from mhc.api.export import export
from mhc.cli.common import console, hydra_app
from mhc.io import read_export_config


@hydra_app("export")
def main(cfg: DictConfig) -> None:
    folder = export(cfg)
    console.print(f"exported {cfg.ckpt} to {folder}:")
    for name in read_export_config(folder)["files"]:
        size = (folder / name).stat().st_size
        console.print(f"  {name:<18} {size / 1e6:8.2f} MB" if size >= 1e5 else f"  {name:<18} {size / 1e3:8.1f} kB")


if __name__ == "__main__":
    main()
