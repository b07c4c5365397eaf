"""The console of a run: one line per epoch where no progress bar draws; no dependency tips
(a real run's console: tests/cli/test_faults.py)."""

import logging

import pytest

from mhc.errors import ConfigError
from mhc.training.console import EpochSummary, quiet_dependencies


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
