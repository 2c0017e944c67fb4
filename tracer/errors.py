"""Errors the user can act on: one line saying what is wrong and what to do, plus an exit code.

`cli.main()` prints `tracer: <message>` for these and exits with `exit_code`; anything else
is a bug and gets a traceback only with `--debug`.
"""

from __future__ import annotations


class TracerError(Exception):
    """A runtime failure with a remedy (exit code 1)."""

    exit_code = 1

    def __init__(self, message: str, remedy: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.remedy = remedy

    def __str__(self) -> str:
        return f"{self.message}: {self.remedy}" if self.remedy else self.message


class UsageError(TracerError):
    """Bad input on the command line (exit code 2)."""

    exit_code = 2


class EnvironmentProblem(TracerError):
    """The machine cannot run the tracer as it is: no root, no bcc, no headers, no BTF."""
