"""Errors clse raises for problems a user can fix.

The CLI prints these as one clear message (no traceback); anything else is a bug.
"""

from __future__ import annotations

from pathlib import Path


class ClseError(Exception):
    """A problem with the user's input, configuration or environment."""


class DataError(ClseError):
    """Malformed input data, located by file and (1-based) line."""

    def __init__(self, path: str | Path, line: int | None, problem: str, expected: str | None = None):
        self.path = str(path)
        self.line = line
        self.problem = problem
        self.expected = expected
        where = f"{self.path}:{line}" if line is not None else self.path
        msg = f"{where}: {problem}"
        if expected:
            msg += f" (expected {expected})"
        super().__init__(msg)


class ConfigError(ClseError):
    """An invalid configuration value or an unknown name."""


class PluginError(ClseError):
    """A plugin could not be found, loaded or built."""
