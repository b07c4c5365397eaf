"""Training survives faults: a run killed with SIGKILL continues from its last checkpoint and ends
exactly where an uninterrupted run ends."""

import os
import signal
import subprocess
import sys
import time

import torch

from tests.api.conftest import NO_FIGURES, TINY

RUN = ["data.num_train=384", "data.num_val=64", "data.num_test=32", "data.batch_size=32", "trainer.max_epochs=3",
       "trainer.deterministic=true", "test=false", "callbacks.progress_bar=null",
       *[o for o in TINY if not o.startswith(("~", "trainer.max_epochs"))], *NO_FIGURES]


def train_command(folder, *extra):
    return [sys.executable, "-m", "mhc.cli.train", *RUN, f"hydra.run.dir={folder}", *extra]


def assert_one_line_per_epoch_and_no_dependency_noise(stderr: str, epochs: int) -> None:
    """What a run writing to a pipe shows: one summary line per epoch (not again for the final
    validation), and none of the dependencies' tips or notices (mhc.training.console)."""
    lines = [line for line in stderr.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == [f"epoch {e}/{epochs}" for e in range(1, epochs + 1)]
    assert all("val/mean/f1 " in line and "| f1 shape " in line and " marks " in line for line in lines)
    for noise in ("Tip:", "litlogger", "LeafSpec", "will override existing callbacks"):
        assert noise not in stderr


def test_sigkill_then_resume_ends_like_an_uninterrupted_run(tmp_path):
    whole = subprocess.run(train_command(tmp_path / "whole"), capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-2000:]
    assert_one_line_per_epoch_and_no_dependency_noise(whole.stderr, epochs=3)
    kept = (tmp_path / "whole" / "train.log").read_text()  # what the console showed, in the run folder
    assert "epoch 3/3: val/loss" in kept and f"best checkpoint: {tmp_path / 'whole'}" in kept

    killed = tmp_path / "killed"
    last = killed / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(train_command(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # into the next epoch
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    interrupted_at = torch.load(last, weights_only=True)["global_step"]
    assert 0 < interrupted_at < 36  # 3 epochs x 12 steps

    resumed = subprocess.run(train_command(tmp_path / "again", f"resume={killed}"), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected = torch.load(tmp_path / "whole" / "checkpoints" / "last.ckpt", weights_only=True)
    got = torch.load(last, weights_only=True)
    assert got["global_step"] == expected["global_step"] == 36
    assert got["mhc"]["metrics"] == expected["mhc"]["metrics"]  # the final per-head validation metrics
    for key, value in expected["state_dict"].items():
        assert torch.equal(got["state_dict"][key], value), key
