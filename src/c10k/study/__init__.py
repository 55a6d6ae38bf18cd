"""The study: run servers under growing connection counts, explain, report.

Public API::

    from pathlib import Path
    from c10k.study import load_matrix, run_study, write_report

    study = run_study(load_matrix("quick"), Path("results"))
    write_report(study, Path("results"))

``find_limit`` escalates one architecture until it fails; ``plan_capacity``
says what a number of connections needs on this machine (``c10k doctor``).
"""

from c10k.study.capacity import Capacity, machine_limits, plan_capacity
from c10k.study.cases import SERVERS, Case, Matrix, filter_servers, load_matrix, matrix_from_toml
from c10k.study.report import write_report
from c10k.study.runner import CaseResult, Commands, StudyResult, find_limit, run_case, run_study
from c10k.study.verdict import Evidence, decide

__all__ = [
    "SERVERS",
    "Capacity",
    "Case",
    "CaseResult",
    "Commands",
    "Evidence",
    "Matrix",
    "StudyResult",
    "decide",
    "filter_servers",
    "find_limit",
    "load_matrix",
    "machine_limits",
    "matrix_from_toml",
    "plan_capacity",
    "run_case",
    "run_study",
    "write_report",
]
