"""Output paths checked before the work starts, so a long run cannot end in "cannot write".

Shared by ``c10k load --out``, ``c10k study --out`` and ``c10k serve --stats-file``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from c10k.errors import C10kError

__all__ = ["check_writable_dir", "check_writable_file"]


def check_writable_dir(path: str | Path, option: str) -> None:
    """Make ``path`` (with its parents) and prove a file can be created in it; C10kError naming ``option``."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".c10k-write-test-"):
            pass
    except OSError as exc:
        raise C10kError(f"cannot write to {option} {path}: {exc.strerror or exc}") from None


def check_writable_file(path: str, option: str) -> None:
    """Prove ``path`` can be written the way it will be (``path.tmp``, then a rename)."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w"):
            pass
        os.unlink(tmp)
    except OSError as exc:
        raise C10kError(f"cannot write {option} {path}: {exc.strerror or exc}") from None
