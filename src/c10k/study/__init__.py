"""The study: run servers under growing connection counts, explain, report.

Public API::

    from pathlib import Path
    from c10k.study import load_matrix, run_study, write_report

    study = run_study(load_matrix("quick"), Path("results"))
    write_report(study, Path("results"))

``find_limit`` escalates one architecture until it fails; ``plan_capacity``
says what a number of connections needs on this machine (``c10k doctor``).

Names are imported on first use, so ``c10k doctor`` (which needs only the
capacity plan and the matrices) does not pay for matplotlib, numpy and psutil.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "Capacity": "capacity", "machine_limits": "capacity", "plan_capacity": "capacity",
    "SERVERS": "cases", "Case": "cases", "Matrix": "cases", "filter_servers": "cases",
    "load_matrix": "cases", "matrix_from_toml": "cases",
    "write_report": "report",
    "CaseResult": "runner", "Commands": "runner", "StudyResult": "runner", "find_limit": "runner",
    "run_case": "runner", "run_study": "runner",
    "Evidence": "verdict", "decide": "verdict",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'c10k.study' has no attribute {name!r}")
    return getattr(importlib.import_module(f"c10k.study.{home}"), name)
