"""``mhc-shard output=DIR``: write any data source as shards that ``data=shards`` streams.

The splits of the configured data (a manifest, a Hugging Face dataset, a built-in set) become
litdata chunks with a description of their tasks and processor; copy the folder to object
storage and train from it with ``data=shards data.path=s3://bucket/prefix``. Examples::

    mhc-shard data=manifest data.train=train.csv data.val=val.csv data.test=test.csv output=shards/
    mhc-shard data=hf data.path=cifar10 data.image_size=[32,32] output=shards/ image_format=jpeg workers=8
    mhc-train data=shards data.path=shards/
"""

from __future__ import annotations

from omegaconf import DictConfig

from mhc.api.shard import shard
from mhc.cli.common import console, hydra_app


@hydra_app("shard")
def main(cfg: DictConfig) -> None:
    description = shard(cfg)
    counts = ", ".join(f"{split} {entry['samples']:,}" for split, entry in description["splits"].items())
    tasks = ", ".join(task["name"] for task in description["tasks"])
    console.print(f"wrote shards to {cfg.output}: {counts} samples; tasks {tasks}")
    console.print(f"train from them with: mhc-train data=shards data.path={cfg.output}")


if __name__ == "__main__":
    main()
