"""Errors in the user's input: the CLI prints their message (naming the key or file and the fix) and exits 2."""

from __future__ import annotations


class ConfigError(ValueError):
    """One or more config problems, each naming the key and the fix."""

    def __init__(self, errors: list[str], source: str = "") -> None:
        self.errors = errors
        head = f"invalid config{f' ({source})' if source else ''}: {len(errors)} problem(s)"
        super().__init__("\n".join([head, *(f"  - {e}" for e in errors)]))


class DataError(ValueError):
    """Data that cannot be used as given; the message names the file (and line or key) and the fix."""


class Interrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint; the message says how to resume."""

    def __init__(self, message: str, signal_name: str) -> None:
        super().__init__(message)
        self.signal_name = signal_name
