"""The package works as a plain wheel installed outside the checkout: configs travel with it,
and every command runs from an unrelated folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ["mhc-train", "mhc-eval", "mhc-predict", "mhc-analyze", "mhc-prune", "mhc-pretrain", "mhc-export",
            "mhc-serve", "mhc-sweep"]
TINY = ["data.num_train=64", "data.num_val=32", "data.num_test=32", "data.batch_size=32", "~callbacks.progress_bar",
        "logger=none"]
USER_EXPERIMENT = """\
# @package _global_
defaults:
  - override /backbone: cnn_tiny
  - override /scheduler: none
seed: 3
trainer:
  max_epochs: 1
"""
USER_BACKBONE = """\
defaults:
  - cnn
  - _self_
widths: [8, 12]
"""


def build_wheel(tmp_path: Path) -> Path:
    """A wheel of a copy of the sources (the checkout is left untouched)."""
    source = tmp_path / "source"
    shutil.copytree(REPO / "mhc", source / "mhc", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    try:  # build with the setuptools at hand when it is recent enough, else in pip's isolated environment
        import setuptools

        isolation = ["--no-build-isolation"] if int(setuptools.__version__.split(".")[0]) >= 68 else []
    except ImportError:
        isolation = []
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", *isolation, "-w", str(dist), str(source)],
                   check=True, capture_output=True, text=True)
    (wheel,) = dist.glob("mhc-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel installed into a fresh target folder, away from the checkout."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                    str(build_wheel(tmp_path))], check=True, capture_output=True, text=True)
    return target


def run_together(target: Path, cwd: Path, *commands: list[str]) -> list[subprocess.CompletedProcess]:
    """The installed ``commands`` run at once (each one is mostly its imports), each checked to succeed."""
    env = {**os.environ, "PYTHONPATH": str(target)}
    env.pop("PYTHONSAFEPATH", None)
    started = [subprocess.Popen([sys.executable, str(target / "bin" / command[0]), *command[1:]], cwd=cwd, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for command in commands]
    done = []
    try:
        for command, process in zip(commands, started):
            out, err = process.communicate(timeout=600)
            assert process.returncode == 0, f"{command[0]}: {err[-3000:]}"
            done.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    finally:
        for process in started:
            process.kill()
    return done


def test_wheel_holds_every_config(installed):
    packaged = sorted(p.relative_to(installed / "mhc" / "conf") for p in (installed / "mhc" / "conf").rglob("*.yaml"))
    in_tree = sorted(p.relative_to(REPO / "mhc" / "conf") for p in (REPO / "mhc" / "conf").rglob("*.yaml"))
    assert packaged == in_tree and len(packaged) > 50
    assert {p.name for p in (installed / "bin").iterdir()} >= set(COMMANDS)


def test_commands_run_from_another_folder(installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "my_configs" / "experiment").mkdir(parents=True)
    (elsewhere / "my_configs" / "experiment" / "mine.yaml").write_text(USER_EXPERIMENT)
    (elsewhere / "my_configs" / "backbone").mkdir()
    (elsewhere / "my_configs" / "backbone" / "cnn_tiny.yaml").write_text(USER_BACKBONE)  # extends the packaged cnn
    sequences = ["data=sequences", "data.num_train=64", "data.num_val=32", "data.num_test=32", "data.batch_size=32"]
    where, *_ = run_together(
        installed, elsewhere,
        ["mhc-train", "--help"],  # composes the packaged configs
        # the user's own experiment file, found through --config-dir, overrides packaged groups
        ["mhc-train", "--config-dir", "my_configs", "experiment=mine", *TINY, "hydra.run.dir=run"],
        ["mhc-train", *sequences, "backbone=seq_tiny", "backbone.dim=16", "backbone.depth=1", "backbone.num_heads=2",
         "trainer.max_epochs=1", "test=false", "~callbacks.progress_bar", "logger=none", "hydra.run.dir=seq"],
        ["mhc-pretrain", "backbone=cnn", "backbone.widths=[8,16]", "trainer.max_epochs=1", *TINY, "hydra.run.dir=pretrain"],
        ["mhc-serve", "--help"], ["mhc-sweep", "--help"])  # argparse commands: their own options
    assert "data: scenes" in where.stdout or "ScenesDataModule" in where.stdout
    checkpoint = elsewhere / "run" / "checkpoints" / "last.ckpt"
    config = (elsewhere / "run" / ".hydra" / "config.yaml").read_text()
    assert checkpoint.is_file() and "seed: 3" in config and "scheduler: {}" in config
    assert "widths:\n  - 8\n  - 12\n  stem_stride: 2" in config  # the user's backbone, on the packaged one
    assert (elsewhere / "pretrain" / "backbone" / "backbone.safetensors").is_file()

    probe = subprocess.run([sys.executable, "-c", "import mhc, sys; print(mhc.__file__)"], cwd=elsewhere,
                           env={**os.environ, "PYTHONPATH": str(installed)}, capture_output=True, text=True, check=True)
    assert Path(probe.stdout.strip()).is_relative_to(installed)  # the wheel's copy, not the checkout

    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(elsewhere / "black.png")
    (elsewhere / "images.csv").write_text("image\nblack.png\n")
    transformer = elsewhere / "seq" / "checkpoints" / "last.ckpt"
    run_together(
        installed, elsewhere,
        ["mhc-eval", f"ckpt={checkpoint}", "hydra.run.dir=eval"],  # the checkpoint's own data
        ["mhc-calibrate", f"ckpt={checkpoint}", "threshold=f1", "hydra.run.dir=calibrate"],
        ["mhc-predict", f"ckpt={checkpoint}", "data.predict=images.csv", "output=predictions.csv", "hydra.run.dir=predict"],
        ["mhc-export", f"ckpt={checkpoint}", "output=exported", "hydra.run.dir=export"],
        ["mhc-analyze", f"ckpt={transformer}", *sequences, "max_batches=1", "samples=1", "prune.fractions=[]",
         "logger=none", "hydra.run.dir=analyze"],
        ["mhc-prune", f"ckpt={transformer}", *sequences, "max_batches=1", "repeats=1", "hydra.run.dir=prune"])
    assert (elsewhere / "eval" / "metrics.json").is_file()
    assert {"calibrated.ckpt", "calibration.json", "reliability.png"} <= {p.name for p in (elsewhere / "calibrate").iterdir()}
    assert (elsewhere / "predictions.csv").read_text().splitlines()[1].startswith("black.png,")
    assert (elsewhere / "exported" / "model.safetensors").is_file()
    assert (elsewhere / "analyze" / "report.md").is_file()
    assert (elsewhere / "prune" / "pruned.ckpt").is_file()
