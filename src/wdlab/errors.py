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
