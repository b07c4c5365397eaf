"""Compose the real Hydra configs with tiny overrides, the way the CLI does."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from mhc.cli.common import CONFIG_PATH

TINY = [
    "data.num_train=96",
    "data.num_val=48",
    "data.num_test=48",
    "data.batch_size=32",
    "backbone.widths=[8,16]",
    "trainer.max_epochs=1",
    "~callbacks.progress_bar",
]


@pytest.fixture
def make_cfg(tmp_path):
    def make(*overrides: str, config_name: str = "train"):
        with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
            return compose(config_name, overrides=[*TINY, f"paths.output_dir={tmp_path}", *overrides])

    return make
