"""`c10k study --out`: a previous study's results are never replaced by surprise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from c10k.errors import UsageError
from c10k.study.outdir import prepare_out_dir


def previous_study(out: Path) -> None:
    (out / "epoll" / "1000").mkdir(parents=True)
    (out / "epoll" / "1000" / "connections.csv").write_text("connection\n")
    (out / "select" / "2000").mkdir(parents=True)
    for name in ("results.json", "REPORT.md", "report.html", "mean_response.png"):
        (out / name).write_text("{}")


def test_absent_or_empty_folders_are_used(tmp_path):
    (tmp_path / "empty").mkdir()
    prepare_out_dir(tmp_path / "empty", force=False)
    prepare_out_dir(tmp_path / "new" / "deeper", force=False)
    assert (tmp_path / "new" / "deeper").is_dir()


def test_a_previous_study_is_refused_without_force(tmp_path):
    previous_study(tmp_path)
    with pytest.raises(UsageError, match="already holds a study's results; pass --force"):
        prepare_out_dir(tmp_path, force=False)
    assert (tmp_path / "results.json").exists() and (tmp_path / "epoll" / "1000").is_dir()


def test_force_removes_only_what_a_study_wrote(tmp_path):
    previous_study(tmp_path)
    (tmp_path / "my-notes.txt").write_text("mine")
    (tmp_path / "scripts").mkdir()
    prepare_out_dir(tmp_path, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my-notes.txt", "scripts"]


def test_a_folder_that_is_not_a_study_is_never_cleared(tmp_path):
    (tmp_path / "thesis.tex").write_text("years of work")
    for force in (False, True):
        with pytest.raises(UsageError, match="holds no study's results"):
            prepare_out_dir(tmp_path, force=force)
    assert (tmp_path / "thesis.tex").read_text() == "years of work"


def study(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "c10k", "study", *args], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("args,words", [
    ([], "already holds a study's results"),
    (["--find-limit", "epoll", "--list"], "--find-limit has none to list"),
])
def test_refusals_are_one_line_and_exit_2_before_anything_runs(tmp_path, args, words):
    previous_study(tmp_path)
    out = study("--matrix", "quick", "--out", str(tmp_path), *args)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"c10k study: error: {out.stderr.split('error: ', 1)[1].strip()}"]
    assert words in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "quick").exists() and (tmp_path / "results.json").read_text() == "{}"


def test_a_matrix_with_no_cases_is_an_error_not_an_interruption(tmp_path):
    matrix = tmp_path / "empty.toml"
    matrix.write_text('name = "empty"\n[[case]]\nserver = []\nconnections = [1]\n')
    out = study("--matrix", str(matrix), "--out", str(tmp_path / "out"))
    assert out.returncode == 2
    assert "matrix empty has no cases" in out.stderr and "interrupted" not in out.stderr


def test_list_prints_every_case_and_the_estimated_duration():
    from c10k.study.cases import load_matrix
    from c10k.study.estimate import duration_words, estimate_case_s, estimate_s

    matrix = load_matrix("quick")
    out = study("--matrix", "quick", "--list")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == len(matrix.cases) + 1
    assert lines[-1] == f"matrix quick: {len(matrix.cases)} cases, about {duration_words(estimate_s(matrix.cases))} " \
                        "on this machine"
    assert lines[0].endswith(f"~{duration_words(estimate_case_s(matrix.cases[0]))}")
    assert " 1 connection " in out.stdout  # not "1 connections"
    assert estimate_s(matrix.cases) < estimate_s(load_matrix("seed").cases)


def test_an_unwritable_out_is_found_before_any_case_runs():
    out = study("--matrix", "quick", "--out", "/proc/self/c10k-results")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "c10k study: error: cannot write to --out /proc/self/c10k-results: No such file or directory"]


def test_without_out_each_run_gets_a_new_dated_folder(tmp_path):
    """The default is results/<matrix>-<date>-<time>/, so a second run (or a `c10k load`, whose
    default is results/load) never collides with the first."""
    matrix = tmp_path / "tiny.toml"
    matrix.write_text('name = "tiny"\n[[case]]\nserver = "select"\nconnections = 1\nmessages = 2\n')
    (tmp_path / "results" / "load").mkdir(parents=True)
    proc = subprocess.run([sys.executable, "-m", "c10k", "study", "--matrix", str(matrix)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    made = [p for p in (tmp_path / "results").iterdir() if p.name.startswith("tiny-")]
    assert len(made) == 1 and (made[0] / "results.json").exists() and (made[0] / "REPORT.md").exists()
    assert f"report in results/{made[0].name}/" in proc.stdout


def test_report_only_needs_out():
    out = study("--report-only")
    assert out.returncode == 2 and "--report-only needs --out DIR" in out.stderr
