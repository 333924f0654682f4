"""The one exception type users can cause; the CLI turns it into one line and exit code 2."""

from __future__ import annotations


class WdlabError(ValueError):
    """A problem the user can fix: the message names the field and the fix, in one line."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(message)


class ConfigError(WdlabError):
    """An invalid configuration value, flag or file."""


class StoreError(WdlabError):
    """The store file itself is missing, damaged or not a wdlab store."""


class CheckpointError(WdlabError):
    """A checkpoint that cannot be trusted: unreadable, truncated, or not this run's."""


class UserCodeError(Exception):
    """An exception raised inside the user's own code (their workload module): reported as
    theirs, with the traceback of their code, not as a wdlab bug and not as one bare line.

    Not a WdlabError (nor a ValueError) on purpose: layers that turn a ValueError into a
    config line must let it through untouched. `traceback_text` holds the user's frames;
    str() is the one summary line the CLI prints after it."""

    def __init__(self, message: str, traceback_text: str) -> None:
        self.traceback_text = traceback_text
        super().__init__(message)


def stored_traceback(err: BaseException) -> str | None:
    """What a failed run keeps besides its one-line message (`wdlab show RUN` prints it): the
    user's own frames for an error in their code, the whole traceback for anything else that
    is not the user's to fix in one line (a bug); None for a WdlabError or an interrupt."""
    if isinstance(err, UserCodeError):
        return err.traceback_text or None
    if isinstance(err, (WdlabError, KeyboardInterrupt)):
        return None
    import traceback

    return "".join(traceback.format_exception(err))
