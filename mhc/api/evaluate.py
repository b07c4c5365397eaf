"""Metrics and predictions of a checkpoint on configured data, as ``mhc-eval`` and ``mhc-predict`` run them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig

from mhc.api.build import checkpoint_with_data
from mhc.api.config import ConfigLike, as_config
from mhc.errors import ConfigError
from mhc.io import atomic_path
from mhc.metrics import per_class_scores
from mhc.text import spreadsheet_cell

SPLITS = ("val", "test")


def evaluate(config: ConfigLike = None, *, ckpt: str | Path | None = None, output_dir: str | Path | None = None,
             config_dir: str | Path | None = None) -> dict[str, dict[str, float]]:
    """Per-head metrics ``{task: {metric: value}}`` of checkpoint ``ckpt`` on ``split`` (default
    ``test``) of the configured data. ``<output_dir>/metrics.json`` holds them with, per head, the
    decision thresholds, each class's precision, recall, F1 and support (``per_class``) and the
    confusion matrix, all counted at those thresholds."""
    cfg = as_config(config, "eval", output_dir, config_dir, ckpt=ckpt)
    if cfg.split not in SPLITS:
        raise ConfigError(f"split: expected one of {list(SPLITS)}, got '{cfg.split}'")
    module, datamodule, trainer = checkpoint_with_data(cfg)
    run = trainer.test if cfg.split == "test" else trainer.validate
    run(module, datamodule=datamodule, verbose=False)
    results = module.last_results.get(cfg.split, {})
    matrices = module.stage_metrics(cfg.split).confusion_matrices(module.labelled_counts(cfg.split))
    if trainer.is_global_zero:
        report = {"checkpoint": str(cfg.ckpt), "split": cfg.split, "metrics": results,
                  "thresholds": {name: t.decision_thresholds() for name, t in module.tasks.items() if t.kind != "multiclass"},
                  "per_class": {name: per_class_scores(module.tasks[name], m) for name, m in matrices.items()},
                  "confusion": {name: m.long().tolist() for name, m in matrices.items()}}
        with atomic_path(metrics_file(cfg)) as tmp:
            tmp.write_text(json.dumps(report, indent=2))
    return results


def metrics_file(cfg: DictConfig) -> Path:
    """Where ``mhc-eval`` writes its report: ``<output_dir>/metrics.json``."""
    folder = Path(cfg.paths.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "metrics.json"


def predictions_table(input_column: str, inputs: list[str], predictions: dict[str, Any]) -> pd.DataFrame:
    """One row per input: the input cell under ``input_column``, the classes, the probabilities;
    text a spreadsheet would run as a formula is written as text (:func:`mhc.text.spreadsheet_cell`)."""
    columns: dict[str, list] = {input_column: [spreadsheet_cell(v) for v in inputs]}
    for name, pred in predictions.items():
        columns[name] = [spreadsheet_cell("|".join(v) if isinstance(v, list) else v) for v in pred.labels]
        for j, cls in enumerate(pred.classes):
            columns[spreadsheet_cell(f"{name}__p_{cls}")] = pred.probs[:, j].tolist()
    return pd.DataFrame(columns)


def predict(config: ConfigLike = None, *, ckpt: str | Path | None = None, inputs: str | Path | None = None,
            output: str | Path | None = None, output_dir: str | Path | None = None,
            config_dir: str | Path | None = None) -> Path:
    """Write per-task predicted classes and probabilities for the manifest ``inputs``
    (``data.predict``), one row per input in order, as CSV to ``output`` (default
    ``<output_dir>/predictions.csv``, replaced atomically); returns its path."""
    cfg = as_config(config, "predict", output_dir, config_dir, ckpt=ckpt, output=output)
    if inputs is not None:
        cfg.data.predict = str(inputs)
    module, datamodule, trainer = checkpoint_with_data(cfg)
    batches = trainer.predict(module, datamodule=datamodule)
    probs = {name: torch.cat([b[name] for b in batches]).cpu() for name in module.tasks}
    table = predictions_table(*datamodule.predict_inputs(), module.decoder.decode(probs))
    out = Path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    return out
