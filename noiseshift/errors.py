"""One error type for everything a user can get wrong.

The CLI turns a `NoiseshiftError` into one line on stderr and exit code 2; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations


class NoiseshiftError(Exception):
    """A problem with the user's input: a file, an option, a model or estimator."""

    def __init__(self, problem: str, path: str | None = None):
        self.problem = problem
        self.path = None if path is None else str(path)
        text = f"{self.path}: {problem}" if self.path else str(problem)
        # One line, whatever a file name or a library's message holds.
        super().__init__(text.replace("\r", "\\r").replace("\n", "\\n"))


class TrajectoryError(NoiseshiftError):
    """A trajectory or estimates file that is not valid format v1."""


class CheckpointError(NoiseshiftError):
    """A model or estimator checkpoint that cannot be used."""
