"""``mhc-predict ckpt=PATH data.predict=FILE.csv``: per-task classes and probabilities to CSV.

The input is a manifest (an ``image`` column, or a ``text`` column for a text model, encoded
with the checkpoint's tokenizer; label columns are optional and ignored, a
``<task>__allowed`` column still restricts that task's classes). The output has one row per
input row, in order: the input column (``image`` or ``text``) as written, then per task the
predicted class (multilabel: ``a|b``) and one ``<task>__p_<class>`` column per class.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig

from mhc.cli.common import checkpoint_with_data, console, hydra_app
from mhc.model.net import decode_predictions


def predictions_table(input_column: str, inputs: list[str], predictions: dict) -> pd.DataFrame:
    """One row per input: the input cell under ``input_column``, the classes, the probabilities."""
    columns: dict[str, list] = {input_column: inputs}
    for name, pred in predictions.items():
        columns[name] = ["|".join(v) if isinstance(v, list) else v for v in pred.labels]
        for j, cls in enumerate(pred.classes):
            columns[f"{name}__p_{cls}"] = pred.probs[:, j].tolist()
    return pd.DataFrame(columns)


def predict(cfg: DictConfig) -> Path:
    module, datamodule, trainer = checkpoint_with_data(cfg)
    batches = trainer.predict(module, datamodule=datamodule)
    probs = {name: torch.cat([b[name] for b in batches]).cpu() for name in module.tasks}
    dataset = datamodule.splits["predict"]
    table = predictions_table(dataset.input_column, dataset.inputs, decode_predictions(module.tasks.values(), probs))
    out = Path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    table.to_csv(tmp, index=False, float_format="%.6g")
    os.replace(tmp, out)
    console.print(f"{len(table)} predictions written to {out}")
    return out


@hydra_app("predict")
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
