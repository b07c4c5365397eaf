"""``callbacks=per_head``: a real run checked against its own logged validation metrics."""

import pandas as pd
import torch

from mhc.api import train
from mhc.export import export_checkpoint
from mhc.io import read_checkpoint


def test_a_run_stops_when_every_head_has_stopped_and_keeps_each_heads_best(make_cfg, tmp_path):
    result = train(make_cfg("callbacks=per_head", "trainer.max_epochs=12", "callbacks.head_early_stopping.patience=1",
                            "callbacks.head_early_stopping.patience_per_head={shape: 2}", "test=false",
                            "optimizer.lr=0.05"))
    logged = pd.read_csv(tmp_path / "csv" / "version_0" / "metrics.csv")
    fitted = set(logged.dropna(subset=["train/mean/acc"])["epoch"])  # the validations after fitting log no training
    epochs = logged[logged["epoch"].isin(fitted)].dropna(subset=["val/shape/f1"]).drop_duplicates("epoch").set_index("epoch")
    tasks = [c.split("/")[1] for c in epochs.columns if c.startswith("val/") and c.endswith("/f1") and "/mean/" not in c]
    # the epoch each head last improved on its F1 (the selection's metric), recomputed from the log;
    # the run stops when all waited out
    best_epoch = {task: int(epochs[f"val/{task}/f1"].idxmax()) for task in tasks}
    last_epoch = int(epochs.index.max())
    patience = {task: 2 if task == "shape" else 1 for task in tasks}
    stop = max(best_epoch[t] + patience[t] for t in tasks)
    # stopped when the last head waited out its patience (or at the last epoch, where one kept improving;
    # the stopping rule itself: tests/training/test_selection.py)
    assert last_epoch == min(stop, 11)

    checkpoint = read_checkpoint(result.best_checkpoint)
    report = checkpoint["mhc"]["head_selection"]
    last = read_checkpoint(result.last_checkpoint)
    stored = next(state for key, state in last["callbacks"].items() if key.startswith("HeadSelection"))
    for task in tasks:
        entry = report[task]
        assert stored["epoch"][task] == best_epoch[task] == entry["own_best_epoch"]
        if entry["kept"]:  # the best checkpoint holds that head's own best weights
            assert entry["swapped"] > entry["checkpoint"]
            for key, value in stored["weights"][task].items():
                torch.testing.assert_close(checkpoint["state_dict"][f"net.heads.{task}.{key}"], value)
        elif entry["swapped"] is not None:
            assert entry["swapped"] <= entry["checkpoint"]
    assert checkpoint["mhc"]["metrics"] == result.metrics["val"]

    card = (export_checkpoint(result.best_checkpoint, tmp_path / "export") / "README.md").read_text()
    assert "## Per-head selection" in card
    for task in tasks:
        assert f"| {task} | {report[task]['checkpoint_epoch']} |" in card
