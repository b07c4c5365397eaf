"""A real 2-process DDP run on CPU (gloo), launched the way users launch it."""

import subprocess
import sys

import torch

import mhc
from tests.cli.conftest import TINY, TINY_SCENES


def test_two_process_cpu_ddp_trains_and_checkpoints(tmp_path):
    overrides = [o for o in [*TINY_SCENES, *TINY] if not o.startswith("~")]
    proc = subprocess.run(
        [sys.executable, "-m", "mhc.train", "trainer=ddp_cpu", *overrides, "callbacks.progress_bar=null",
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
