"""Named exceptions for every failure kind that textmill reports to users.

Raised on the driver while a job is being planned, before any Spark action, so that a
bad config or a missing input costs seconds, not a cluster run. The CLI prints
`TextmillError` messages as one line and exits with status 2; anything else is a bug
and keeps its traceback.
"""
from __future__ import annotations


class TextmillError(Exception):
    """Base class: a user-facing problem with a message that says what to change."""


class ConfigError(TextmillError):
    """The configuration is invalid: unknown key, missing value or wrong type."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = problems
        lines = "\n  - ".join(problems)
        super().__init__(f"invalid {source} ({len(problems)} problem{'s' if len(problems) != 1 else ''}):\n  - {lines}")


class JavaError(TextmillError):
    """Java is missing or too old to start Spark."""


class InputNotFoundError(TextmillError):
    """The configured input path does not exist or matches no files."""


class EmptyInputError(InputNotFoundError):
    """The input exists but holds no records (every file empty, or nothing parsed)."""


class ColumnNotFoundError(TextmillError):
    """A configured source column is not in the input."""


class AccountingError(TextmillError):
    """rows_in != rows_out + rows_quarantined: a row was lost or duplicated."""


class OutputError(TextmillError):
    """The output location is unusable (e.g. it is the input itself)."""
