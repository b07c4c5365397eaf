"""Errors that reach users as one clear sentence instead of a traceback."""

from __future__ import annotations

# Characters that start a new line (those ``str.splitlines`` splits on), shown escaped instead.
_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"}


def first_line(err: BaseException) -> str:
    """The first line of an exception from another library (at most 200 characters), to quote it."""
    return (str(err).splitlines() or [type(err).__name__])[0][:200]


class MhcError(Exception):
    """Base class: the message alone tells the user what is wrong and what was expected.

    The message is always one line: a line break quoted from the data (a cell, a column name)
    is shown escaped (``\\n``).
    """

    def __init__(self, message: str = "") -> None:
        super().__init__(str(message).translate(_LINE_BREAKS))


class ConfigError(MhcError):
    """The configuration names an unknown key, task or value, or has a wrong type."""


class CheckpointError(MhcError):
    """A checkpoint or export is missing, truncated, corrupt or unsafe to load."""


class DataError(MhcError):
    """Input data is malformed; the message names the file, row, column or task.

    DataLoader workers re-raise exceptions as ``type(exc)(text)`` where ``text`` wraps the
    original message in a worker traceback; the constructor recovers the original sentence
    so users never see a traceback from inside a worker.
    """

    def __init__(self, message: str) -> None:
        marker = f"{type(self).__name__}: "
        if "Original Traceback" in message and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


class NonFiniteLossError(MhcError):
    """A task's loss became NaN or infinite; the message names the task and the step."""
