"""The study's output folder: never overwrite a previous study's results by surprise.

A second ``c10k study`` into the same ``--out`` used to replace ``results.json``
and leave the first run's case folders behind, so an hour-long seed run could be
clobbered by a two-minute quick one and the report mix both. Now a folder that
holds a study's results is refused unless ``--force``, and ``--force`` removes
only what a study writes there (its files and its per-server case folders).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from c10k.errors import UsageError
from c10k.outputs import check_writable_dir
from c10k.study.cases import SERVERS

__all__ = ["prepare_out_dir", "default_out", "STUDY_FILES"]

#: Files a study writes at the top of its folder (charts are ``*.png``).
STUDY_FILES = ("results.json", "results.json.tmp", "REPORT.md", "report.html")


def default_out(name: str, root: Path = Path("results")) -> Path:
    """``results/<name>-<date>-<time>/``: where a study goes when no --out is given."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name) or "study"
    return root / f"{safe}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_out_dir(out: Path, *, force: bool) -> None:
    """Make ``out`` ready for a new study, or raise ``UsageError`` saying why not.

    An absent or empty folder is used as it is. A folder with a previous
    study's ``results.json`` is cleared of that study's files only with
    ``force``. Any other non-empty folder is refused: it is not ours to clear.
    """
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    if not out.exists() or not any(out.iterdir()):
        check_writable_dir(out, "--out")
        return
    if not (out / "results.json").exists():
        raise UsageError(f"--out {out} is not empty and holds no study's results; choose another folder")
    if not force:
        raise UsageError(f"--out {out} already holds a study's results; pass --force to replace them "
                         "or choose another --out")
    for name in STUDY_FILES:
        (out / name).unlink(missing_ok=True)
    for chart in out.glob("*.png"):
        chart.unlink()
    for server in SERVERS:
        if (out / server).is_dir():
            shutil.rmtree(out / server)
    check_writable_dir(out, "--out")
