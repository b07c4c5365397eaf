"""``resume=``: where a continued run writes, what it refuses, and what a killed run leaves behind.

Each case gives the exact input and the exact one-line message, and checks what stays intact on disk.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mhc.api import train
from mhc.errors import ConfigError


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def steps(path: Path) -> int:
    return torch.load(path, weights_only=True)["global_step"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished one-epoch run's folder (copied by each test that changes it)."""
    from tests.api.conftest import compose_config

    folder = tmp_path_factory.mktemp("finished") / "run"
    train(compose_config("train", folder, "test=false"))
    return folder


@pytest.fixture
def run(finished, tmp_path):
    """A copy of the finished run under ``tmp_path/outputs``, written where its checkpoints say."""
    folder = tmp_path / "outputs" / "run"
    shutil.copytree(finished, folder)
    return folder


def dead_pid() -> int:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(finished.stdout)


def test_a_copied_checkpoint_continues_in_the_new_run_and_leaves_the_original_intact(make_cfg, tmp_path):
    first = tmp_path / "outputs" / "first"
    train(make_cfg("test=false", output_dir=first))
    before = files(first / "checkpoints")
    copy = tmp_path / "outputs" / "copied.ckpt"  # above the original run's folder
    shutil.copy(first / "checkpoints" / "last.ckpt", copy)

    second = tmp_path / "outputs" / "second"
    result = train(make_cfg("test=false", "trainer.max_epochs=2", f"resume={copy}", output_dir=second))
    assert files(first / "checkpoints") == before  # nothing of the original run replaced or deleted
    assert copy.read_bytes() == before["last.ckpt"]
    assert steps(second / "checkpoints" / "last.ckpt") == 2 * steps(copy)
    assert result.best_checkpoint.parent == second / "checkpoints"


def test_a_checkpoint_where_its_run_wrote_it_is_continued_in_that_run(make_cfg, tmp_path):
    """... and what an interrupted write left there (a temporary of a dead writer) is removed."""
    first = tmp_path / "first"
    train(make_cfg("test=false", output_dir=first))
    one_epoch = steps(first / "checkpoints" / "last.ckpt")
    stale = first / "checkpoints" / f".last.ckpt.tmp{dead_pid()}"
    stale.write_bytes(b"half a checkpoint")
    train(make_cfg("test=false", "trainer.max_epochs=2", f"resume={first / 'checkpoints' / 'last.ckpt'}",
                   output_dir=tmp_path / "second"))
    assert steps(first / "checkpoints" / "last.ckpt") == 2 * one_epoch
    assert not (tmp_path / "second" / "checkpoints").exists()
    assert not stale.exists()


def reordered(path: Path, task: str) -> list[str]:
    """Reverse ``task``'s classes in the checkpoint at ``path`` (as a class order that changed
    between processes would); the checkpoint's classes."""
    checkpoint = torch.load(path, weights_only=True)
    spec = next(t for t in checkpoint["mhc"]["net"]["tasks"] if t["name"] == task)
    spec["classes"] = spec["classes"][::-1]
    torch.save(checkpoint, path)
    return spec["classes"]


def test_resume_refuses_a_checkpoint_whose_classes_differ_from_the_data(make_cfg, run, tmp_path):
    last = run / "checkpoints" / "last.ckpt"
    stored = reordered(last, "shape")
    before = files(run / "checkpoints")
    message = (f"resume: checkpoint '{last}' has task 'shape' with classes {stored}, this run's data and config give "
               f"{stored[::-1]}; the heads' outputs would be read as other classes. Resume with the checkpoint's classes, "
               "or start a new run")
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        train(make_cfg("test=false", "trainer.max_epochs=2", f"resume={run}", output_dir=tmp_path / "again"))
    assert files(run / "checkpoints") == before


def test_resume_with_another_architecture_names_the_option(make_cfg, run, tmp_path):
    last = run / "checkpoints" / "last.ckpt"
    message = (f"resume: checkpoint '{last}' has backbone.widths=[8, 16], this run [8, 32]; "
               "resume with the checkpoint's options, or start a new run")
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        train(make_cfg("test=false", "backbone.widths=[8,32]", f"resume={run}", output_dir=tmp_path / "again"))


def test_options_the_optimizer_state_overrides_are_named_and_recorded_as_used(make_cfg, run, tmp_path, caplog):
    lr = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["mhc"]["config"]["optimizer"]["lr"]
    with caplog.at_level(logging.WARNING, logger="mhc"):
        train(make_cfg("test=false", "trainer.max_epochs=2", "optimizer.lr=0.5", f"resume={run}", output_dir=tmp_path / "again"))
    assert f"resume: optimizer.lr=0.5 (checkpoint {lr!r}) not used" in caplog.text
    recorded = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["mhc"]["config"]["optimizer"]["lr"]
    assert recorded == lr


def test_a_run_killed_while_writing_its_last_checkpoint_is_continued_from_its_best(make_cfg, run, finished, tmp_path):
    older = tmp_path / "outputs" / "older"  # another run, finished earlier, with a last.ckpt
    shutil.copytree(finished, older)
    (run / "checkpoints" / "last.ckpt").unlink()  # killed while the last file was first written:
    stale = run / "checkpoints" / f".last.ckpt.tmp{dead_pid()}"
    stale.write_bytes(b"half a checkpoint")
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    best.touch()  # newer than the older run's checkpoints

    train(make_cfg("test=false", "trainer.max_epochs=2", "resume=auto", output_dir=tmp_path / "outputs" / "again"))
    continued = tmp_path / "outputs" / "again" / "checkpoints"  # a copied run continues in the new folder
    assert steps(continued / "last.ckpt") == 2 * steps(best)
    assert steps(older / "checkpoints" / "last.ckpt") == steps(best)  # the older run was not the one continued

    train(make_cfg("test=false", "trainer.max_epochs=2", f"resume={run}", output_dir=tmp_path / "outputs" / "third"))
    assert steps(tmp_path / "outputs" / "third" / "checkpoints" / "last.ckpt") == 2 * steps(best)


def test_a_run_never_writes_into_a_folder_holding_another_runs_checkpoints(make_cfg, run):
    before = files(run / "checkpoints")
    message = (f"the run folder '{run}' already holds checkpoints ({', '.join(sorted(before))}); "
               f"continue that run with resume={run}, or give a new folder (hydra.run.dir=...)")
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        train(make_cfg("test=false", output_dir=run))
    assert files(run / "checkpoints") == before


def test_resume_of_a_folder_without_checkpoints_names_it(make_cfg, tmp_path):
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    message = f"resume: no checkpoint in '{tmp_path / 'empty' / 'checkpoints'}' (expected last.ckpt or another *.ckpt)"
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        train(make_cfg("test=false", f"resume={tmp_path / 'empty'}", output_dir=tmp_path / "again"))


def test_commands_started_in_the_same_second_get_their_own_run_folders():
    from hydra import compose, initialize_config_module

    from mhc.api.config import register_resolvers
    from mhc.config import CONFIG_MODULE

    script = ("from hydra import compose, initialize_config_module\nfrom mhc.api.config import register_resolvers\n"
              "register_resolvers()\nwith initialize_config_module('mhc.conf', version_base='1.3'):\n"
              "    print(compose('train', return_hydra_config=True).hydra.run.dir)\n")
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.strip()
    register_resolvers()
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        mine = compose("train", return_hydra_config=True).hydra.run.dir
    assert re.fullmatch(r"outputs/train/\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_[0-9a-f]{6}", mine)
    assert mine.rsplit("_", 1)[1] != other.rsplit("_", 1)[1]
