"""User-facing errors: the CLI prints their message on one line and exits with status 2."""

from __future__ import annotations

__all__ = ["B4MError", "DiskFullError", "DivergedError", "warn"]


class B4MError(Exception):
    """Bad input from the user (a file, an option, a config value). The message says what to do."""


class DivergedError(B4MError):
    """Training stopped at a NaN/infinite loss or weight (the learning rate is too high for the run)."""


class DiskFullError(B4MError):
    """A write failed because the disk (or the user's quota) is full; nothing half-written was left."""


def warn(message: str) -> None:
    """One warning line on stderr, in the CLI's ``b4m: ...`` style (for inputs b4m accepts but changes)."""
    import sys

    print(f"b4m: warning: {message}", file=sys.stderr)
