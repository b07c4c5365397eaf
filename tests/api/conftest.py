"""Compose the real Hydra configs with tiny overrides through :func:`mhc.api.compose_config`."""

from __future__ import annotations

import pytest

from mhc import api

TINY_SCENES = ["data.num_train=96", "data.num_val=48", "data.num_test=48", "data.batch_size=32"]
TINY = [
    "backbone.widths=[8,16]",
    "trainer.max_epochs=1",
    "~callbacks.progress_bar",
]


# Drawing a run's figures takes up to half a tiny run's time: drawn where a test looks at them (figures=True).
NO_FIGURES = ["callbacks.confusion_matrices=null", "callbacks.pr_curves=null"]
TINY_BY_COMMAND = {  # the tiny settings each command has options for (a checkpoint's own data is tiny already)
    "train": [*TINY_SCENES, *TINY, *NO_FIGURES],
    "pretrain": [*TINY_SCENES, *TINY],
}


def compose_config(config_name: str, output_dir, *overrides: str, figures: bool = False):
    tiny = [o for o in TINY_BY_COMMAND.get(config_name, []) if not figures or o not in NO_FIGURES]
    return api.compose_config(config_name, [*tiny, *overrides], output_dir=output_dir)


@pytest.fixture
def make_cfg(tmp_path):
    """A composed config; its run folder is ``output_dir`` (default: the test's ``tmp_path``);
    ``figures=True`` draws the run's figures."""

    def make(*overrides: str, config_name: str = "train", output_dir=None, figures: bool = False):
        return compose_config(config_name, tmp_path if output_dir is None else output_dir, *overrides, figures=figures)

    return make


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory):
    """A checkpoint of a tiny run, shared by the tests of one module."""
    out = tmp_path_factory.mktemp("trained")
    api.train(compose_config("train", out, "test=false"))
    return out / "checkpoints" / "last.ckpt"
