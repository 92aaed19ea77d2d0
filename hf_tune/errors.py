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


class RunError(RuntimeError):
    """A run stopped for a reason in its environment that the user can fix (disk full, no permission to write);
    the message says what happened, what was kept and how to continue. The CLI exits 1 without a traceback."""


DISK_FULL_SIGNS = ("No space left on device", "enforce fail at inline_container", "PytorchStreamWriter failed writing")


def environment_error(exc: BaseException, output_dir: object) -> RunError | None:
    """A RunError for a disk-full or permission failure (however torch or the OS words it), else None."""
    import errno

    text = str(exc)
    if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or any(s in text for s in DISK_FULL_SIGNS):
        return RunError(
            f"disk full while writing under {output_dir} ({text.splitlines()[0][:200]}). Complete checkpoints "
            f"already written are kept; free space (or set training.save_total_limit) and rerun with resume=true"
        )
    if isinstance(exc, PermissionError):
        return RunError(f"no permission to write {exc.filename or output_dir}: choose a training.output_dir you own")
    return None


class Interrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint; the message says how to resume."""

    def __init__(self, message: str, signal_name: str) -> None:
        super().__init__(message)
        self.signal_name = signal_name
