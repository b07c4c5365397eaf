"""The console of a run: one line per epoch where no progress bar draws; no dependency tips."""

import logging
import subprocess
import sys

import pytest

from mhc.errors import ConfigError
from mhc.training.console import EpochSummary, quiet_dependencies
from tests.api.conftest import TINY, TINY_SCENES


def test_a_run_writing_to_a_file_shows_one_line_per_epoch_and_no_dependency_noise(tmp_path):
    overrides = [o for o in [*TINY_SCENES, *TINY] if not o.startswith(("~", "trainer.max_epochs"))]
    finished = subprocess.run([sys.executable, "-m", "mhc.cli.train", *overrides, "trainer.max_epochs=2", "test=false",
                               f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    epochs = [line for line in finished.stderr.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["epoch 1/2", "epoch 2/2"]  # not again for the final validation
    assert all("val/mean/f1 " in line and "| f1 shape " in line and " marks " in line for line in epochs)
    for noise in ("Tip:", "litlogger", "LeafSpec", "will override existing callbacks"):
        assert noise not in finished.stderr


def test_the_epoch_summary_options():
    with pytest.raises(ConfigError, match=r"callbacks.epoch_summary.when must be one of \['auto', 'always', 'never'\]"):
        EpochSummary(when="sometimes")
    assert EpochSummary(when="always").active() and not EpochSummary(when="never").active()


def test_lightning_tips_are_dropped_and_other_messages_kept():
    quiet_dependencies()
    logger = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    seen: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    try:
        logger.info("💡 Tip: For seamless cloud logging, try installing litlogger")
        logger.info("GPU available: False, used: False")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert seen == ["GPU available: False, used: False"]
