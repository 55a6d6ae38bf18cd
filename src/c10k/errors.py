"""Errors that reach the user as one line, never as a traceback."""

__all__ = ["C10kError", "UsageError"]


class C10kError(Exception):
    """A failure the user can act on; the CLI prints it on one line and exits 1."""

    exit_status = 1


class UsageError(C10kError):
    """A bad argument or combination of arguments; the CLI exits 2."""

    exit_status = 2
