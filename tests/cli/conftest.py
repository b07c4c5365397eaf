"""Compose the real Hydra configs with tiny overrides, the way the CLI does."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from mhc.cli.common import CONFIG_PATH

TINY_SCENES = ["data.num_train=96", "data.num_val=48", "data.num_test=48", "data.batch_size=32"]
TINY = [
    "backbone.widths=[8,16]",
    "trainer.max_epochs=1",
    "~callbacks.progress_bar",
]


def compose_config(config_name: str, output_dir, *overrides: str):
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        scenes = [] if config_name == "predict" else TINY_SCENES
        return compose(config_name, overrides=[*scenes, *TINY, f"paths.output_dir={output_dir}", *overrides])


@pytest.fixture
def make_cfg(tmp_path):
    def make(*overrides: str, config_name: str = "train"):
        return compose_config(config_name, tmp_path, *overrides)

    return make


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory):
    """A checkpoint of a tiny run, shared by the tests of one module."""
    from mhc.cli.train import train

    out = tmp_path_factory.mktemp("trained")
    train(compose_config("train", out, "test=false"))
    return out / "checkpoints" / "last.ckpt"
