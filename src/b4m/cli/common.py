"""What the command modules of :mod:`b4m.cli` share: the help formatters and the examples epilog."""

from __future__ import annotations

import argparse


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default only where there is one to show (not None / False, not already in the help)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is False or "default" in text:
            return text
        return super()._get_help_string(action) or text


class ExamplesFormatter(DefaultsFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults as :class:`DefaultsFormatter`, and an epilog of examples kept line by line."""


def examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)
