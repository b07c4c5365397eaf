"""A real 2-process DDP run on CPU (gloo), launched the way users launch it."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mhc
from mhc.api import compose_config, evaluate
from tests.api.conftest import TINY, TINY_SCENES


def test_two_process_cpu_ddp_trains_and_its_metrics_equal_one_process(tmp_path):
    """DDP on CPU; 49 validation samples do not split evenly, and the per-head validation metrics
    of the two processes together still equal a one-process evaluation of the same weights."""
    overrides = [o for o in [*TINY_SCENES, *TINY] if not o.startswith("~")] + ["data.num_val=49"]
    overrides.append("trainer.precision=32-true")  # the precision mhc-eval compares at
    proc = subprocess.run(
        [sys.executable, "-m", "mhc.cli.train", "trainer=ddp_cpu", *overrides, "callbacks.progress_bar=null",
         f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test metrics of the best checkpoint" in proc.stderr
    assert (tmp_path / "train_ddp_process_1.log").is_file()  # the second rank ran
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    # 96 samples / (2 processes x batch 32) -> 2 optimizer steps per epoch
    assert checkpoint["global_step"] == 2
    assert set(mhc.load(tmp_path / "checkpoints" / "last.ckpt").tasks) >= {"shape", "marks"}

    best = next((tmp_path / "checkpoints").glob("best-*.ckpt"))
    cfg = compose_config("eval", [f"ckpt={best}", "split=val"], output_dir=tmp_path)  # the checkpoint's data: 49 to validate
    single = evaluate(cfg)
    rows = list(csv.DictReader((tmp_path / "csv" / "version_0" / "metrics.csv").open()))
    distributed = rows[-2]  # the best checkpoint validated again after fitting (the last row is its test)
    assert distributed["val/shape/acc"]
    for task, values in single.items():
        for metric, value in values.items():
            if metric != "loss":
                assert float(distributed[f"val/{task}/{metric}"]) == pytest.approx(value, abs=1e-6), (task, metric)


class RankChecksum:
    """A callback writing each process's parameter sum at the end of training (used via +callbacks)."""

    def __new__(cls, folder: str):
        import pytorch_lightning as pl

        class _Checksum(pl.Callback):
            def on_train_end(self, trainer, module):
                total = sum(float(p.detach().double().sum()) for p in module.net.parameters())
                (Path(folder) / f"rank{trainer.global_rank}.txt").write_text(repr(total))

        return _Checksum()


def train_in_step(folder: Path, overrides: list[str]) -> int:
    """A 2-process CPU DDP run with PCGrad and each rank's parameter sum written at the end;
    both processes end with the same weights. The run's optimizer steps."""
    proc = subprocess.run(
        [sys.executable, "-m", "mhc.cli.train", "trainer=ddp_cpu", *overrides, "callbacks.progress_bar=null", "test=false",
         "weighting=pcgrad", "+callbacks.checksum._target_=tests.cli.test_ddp.RankChecksum",
         f"+callbacks.checksum.folder={folder}", f"hydra.run.dir={folder / 'run'}"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (folder / "rank0.txt").read_text() == (folder / "rank1.txt").read_text()
    return torch.load(folder / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]


def test_gradient_method_under_ddp_keeps_processes_in_step(tmp_path):
    """PCGrad combines each process's task gradients; DDP all-reduces the combined gradient, so
    both processes end with the same weights."""
    overrides = [o for o in [*TINY_SCENES, *TINY] if not o.startswith("~")]
    assert train_in_step(tmp_path, [*overrides, "trainer.max_epochs=2"]) == 4


@pytest.mark.parametrize("source", ["timm", "hf"])
def test_pretrained_backbones_train_under_ddp(tmp_path, source, bert_folder):
    """A timm and a Hugging Face backbone under 2-process DDP with a gradient method: every
    parameter takes part (no unused ones), and both processes end with the same weights."""
    if source == "timm":
        data = [*TINY_SCENES, "backbone=timm", "backbone.model=test_resnet", "backbone.pretrained=false"]
    else:
        from tests.api.test_pretrained import text_manifest

        text_manifest(32, 0).to_csv(tmp_path / "train.csv", index=False)
        text_manifest(12, 1).to_csv(tmp_path / "val.csv", index=False)
        data = ["backbone=hf", f"backbone.model={bert_folder}", f"data.train={tmp_path}/train.csv",
                f"data.val={tmp_path}/val.csv", "data.max_length=16", "data.batch_size=8"]
    assert train_in_step(tmp_path, [*data, "trainer.max_epochs=1"]) == 2


def test_pretraining_under_ddp_draws_its_reconstructions_once(tmp_path):
    """Rank 0 alone draws the reconstructions; the log folder (a collective) is read by every rank."""
    overrides = [o for o in [*TINY_SCENES, *TINY] if not o.startswith("~")]
    proc = subprocess.run(
        [sys.executable, "-m", "mhc.cli.pretrain", "trainer=ddp_cpu", *overrides, "callbacks.progress_bar=null",
         f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.name for p in tmp_path.rglob("reconstructions/*.png")] == ["epoch000.png"]
