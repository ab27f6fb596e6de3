"""User-facing errors: the CLI prints their message on one line and exits with status 2."""


class B4MError(Exception):
    """Bad input from the user (a file, an option, a config value). The message says what to do."""
