"""``mhc-analyze``: the report, its figures and tables, and the logger's copy."""

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mhc.analysis.attention import PATTERNS
from mhc.api import analyze
from mhc.errors import ConfigError

FIGURES = ["attention_sample0", "attention_sample1", "rollout", "patterns", "importance", "redundancy", "pruning_curve"]


def test_report_figures_tables_and_tensorboard_copy(make_cfg, sequence_checkpoint, tmp_path):
    cfg = make_cfg(f"ckpt={sequence_checkpoint}", "data=sequences", "samples=[0,5]", "max_batches=2",
                   "prune.fractions=[0.0,0.5]", "prune.random_seeds=2", "logger=tensorboard", config_name="analyze")
    report = analyze(cfg).report
    text = report.read_text()
    for stem in FIGURES:
        png = tmp_path / "figures" / f"{stem}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"figures/{stem}.png" in text
    summary = json.loads((tmp_path / "analysis.json").read_text())
    assert len(summary["heads"]) == 8 and all(h["pattern"] in PATTERNS for h in summary["heads"])
    assert {"importance/first", "importance/majority", "entropy", "previous", "first"} <= set(summary["heads"][0])
    curve = summary["pruning_curve"]
    assert {(p["strategy"], p["fraction"]) for p in curve} == {("importance", 0.0), ("importance", 0.5), ("random", 0.0), ("random", 0.5)}
    assert all(p["heads_pruned"] == (4 if p["fraction"] == 0.5 else 0) for p in curve)
    assert "## Pruning curve" in text and "| L0H0 |" in text
    events = EventAccumulator(str(next((tmp_path / "tensorboard").glob("version_*"))), size_guidance={"images": 0}).Reload()
    assert {f"analysis/{stem}" for stem in FIGURES} <= set(events.Tags()["images"])
    assert "analysis/pruning/mean/acc" in events.Tags()["scalars"]


def test_analyze_refuses_a_cnn_checkpoint(make_cfg, trained_checkpoint):
    with pytest.raises(ConfigError, match="backbone 'cnn' is not a transformer"):
        analyze(make_cfg(f"ckpt={trained_checkpoint}", config_name="analyze"))


def test_analyze_unknown_split_is_clear(make_cfg, sequence_checkpoint):
    with pytest.raises(ConfigError, match="split: expected one of"):
        analyze(make_cfg(f"ckpt={sequence_checkpoint}", "data=sequences", "split=dev", config_name="analyze"))
