"""`c10k study --server-command`: the template's checks, and the runner's container
side against a stand-in engine (the real podman run is tests/container/, marker ``container``).

The stand-in is a ``podman`` script first on PATH: ``run`` starts ``c10k serve
epoll`` on the published host port (its pid is the "container's" PID 1) and waits for it,
``inspect`` prints that pid, ``stop`` sends SIGTERM, ``rm`` kills and forgets,
``ps`` lists what is not yet removed; each call is logged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from c10k.errors import UsageError
from c10k.study.container import NAME_PREFIX, ServerTemplate

FAKE_PODMAN = textwrap.dedent("""\
    #!{python}
    import os, signal, sys
    from pathlib import Path

    state = Path({state!r})
    args = sys.argv[1:]
    with (state / "calls.log").open("a") as log:
        log.write(" ".join(args) + "\\n")

    def pid_of(name):
        try:
            return int((state / (name + ".pid")).read_text())
        except (OSError, ValueError):
            return None

    if args[0] == "run":
        # Like `podman run`: a client that waits for the container and exits with its status;
        # the server is not the client's own process (there, conmon's).
        name = args[args.index("--name") + 1]
        host_port = args[args.index("-p") + 1].split(":")[0]
        if "broken_image" in args:
            sys.exit("broken_image: no such image")
        pid = os.fork()
        if pid == 0:
            os.execv(sys.executable, [sys.executable, "-m", "c10k", "serve", "epoll", "--host", "127.0.0.1",
                                      "-p", host_port, "--workers", "1"])
        (state / (name + ".pid")).write_text(str(pid))
        sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    elif args[0] == "inspect":
        pid = pid_of(args[-1])
        if pid is None:
            sys.exit("no such container")
        print(pid)
    elif args[0] == "stop":
        os.kill(pid_of(args[-1]), signal.SIGTERM)
    elif args[0] == "rm":
        name = args[-1]
        pid = pid_of(name)
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            (state / (name + ".pid")).unlink()
    elif args[0] == "ps":
        print("\\n".join(p.name[:-4] for p in state.glob("*.pid")))
    """)

TINY = """
name = "fake container"
[[case]]
server = "epoll"
connections = [1, 200]
messages = 5
"""
TEMPLATE = "podman run --rm --name {name} -p {port}:7000 epoll_server_image -p 7000"


@pytest.fixture
def fake_engine(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """(environment with the stand-in podman first on PATH, its state folder)."""
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    script = bin_dir / "podman"
    script.write_text(FAKE_PODMAN.format(python=sys.executable, state=str(state)))
    script.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "COLUMNS": "200"}, state


def study(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "c10k", "study", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_a_template_renders_its_fields_word_by_word(fake_engine, monkeypatch):
    monkeypatch.setenv("PATH", fake_engine[0]["PATH"])
    t = ServerTemplate.parse("podman run --name {name} -p {port}:7000 -v '{stats}:/s t' img -p 7000")
    assert t.fields == {"port", "name", "stats"}
    assert t.render(8123, "box", Path("/tmp/s")) == [
        "podman", "run", "--name", "box", "-p", "8123:7000", "-v", "/tmp/s:/s t", "img", "-p", "7000"]


@pytest.mark.parametrize(("template", "words"), [
    ("podman run --name {name} img", "needs {port}"),
    ("podman run -p {port}:7000 img", "needs {name}"),
    ("podman run --name {name} -p {port}:7000 -e X={host} img", "unknown field {host}"),
    ("podman run --name {name} -p {port:7000 img", "in '{port:7000'"),
    ("podman run --name '{name} -p {port}:7000 img", "--server-command: No closing quotation"),
    ("podman run -d --name {name} -p {port}:7000 img", "must stay in the foreground"),
    ("nc -l {port} {name}", "must start with podman or docker"),
    ("   ", "--server-command is empty"),
])
def test_a_bad_template_is_one_line_and_exit_2_before_anything_runs(fake_engine, tmp_path, template, words):
    out = tmp_path / "out"
    proc = study("--matrix", "quick", "--server-command", template, "--out", str(out), env=fake_engine[0])
    assert proc.returncode == 2
    assert words in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not out.exists()


def test_a_bad_template_is_refused_in_the_library_too(fake_engine, monkeypatch):
    monkeypatch.setenv("PATH", fake_engine[0]["PATH"])
    with pytest.raises(UsageError, match="needs {name}"):
        ServerTemplate.parse("podman run -p {port}:7000 img")


@pytest.mark.parametrize(("args", "words"), [
    (["--server-name", "box"], "--server-name names the server of --server-command"),
    (["--server-command", TEMPLATE, "--topology", "netns"], "runs over loopback only"),
])
def test_server_command_options_that_do_not_go_together(fake_engine, tmp_path, args, words):
    proc = study("--matrix", "quick", "--out", str(tmp_path / "out"), *args, env=fake_engine[0])
    assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr


def test_each_case_runs_the_command_samples_its_pid_and_removes_it(fake_engine, tmp_path):
    env, state = fake_engine
    stale = f"{NAME_PREFIX}999999999-1-1"  # a study pid that is not running: a killed run's container
    (state / f"{stale}.pid").write_text("999999999")
    (state / "someone-elses.pid").write_text("999999998")
    matrix = tmp_path / "tiny.toml"
    matrix.write_text(TINY)
    out = tmp_path / "out"
    proc = study("--matrix", str(matrix), "--server-command", TEMPLATE, "--server-name", "epoll in a box",
                 "--out", str(out), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"removed 1 container(s) a killed run left: {stale}" in proc.stdout

    results = json.loads((out / "results.json").read_text())
    assert results["topology"]["kind"] == "container"
    names = []
    for case in results["cases"]:
        assert case["status"] == "passed", case["reason"]
        assert case["server"] == "epoll in a box"
        names.append(case["container"]["name"])
        assert case["container"]["host_port"] > 0
        # The sampler watched the pid `inspect` gave: the server and its one worker, not the client
        # (whose tree would be three processes).
        assert case["server_usage"]["peak_processes"] == 2
        assert case["server_exit"] == 0  # `stop`'s SIGTERM, and the server's clean exit
    assert len(set(names)) == 2 and all(n.startswith(f"{NAME_PREFIX}") for n in names)

    calls = (state / "calls.log").read_text().splitlines()
    for name in names:
        assert f"inspect --format {{{{.State.Pid}}}} {name}" in calls
        assert any(c.startswith("stop -t ") and c.endswith(name) for c in calls)
        assert f"rm --force --ignore --time 0 {name}" in calls
    assert sorted(p.name for p in state.glob("*.pid")) == ["someone-elses.pid"]
    assert "epoll in a box" in (out / "REPORT.md").read_text()

    # The report can be rebuilt from results.json, container fields and all.
    (out / "REPORT.md").unlink()
    again = study("--report-only", "--out", str(out), env=env)
    assert again.returncode == 0, again.stderr
    assert "epoll in a box" in (out / "REPORT.md").read_text()
    assert json.loads((out / "results.json").read_text())["cases"][0]["container"]["name"] == names[0]


def test_the_network_line_says_the_load_went_through_a_published_port():
    from c10k.study.network_report import network_line

    line = network_line({"kind": "container", "server": "127.0.0.1", "engine": "podman",
                         "nft_tables_removed": ["ip nat", "ip filter"]})
    assert line.startswith("Network: loopback to a port podman published on 127.0.0.1")
    assert "(ip nat, ip filter) were removed after the run" in line
    assert "removed" not in network_line({"kind": "container", "server": "127.0.0.1", "engine": "podman",
                                          "nft_tables_removed": []})


def test_a_container_that_never_serves_is_a_failed_case_and_is_removed(fake_engine, tmp_path):
    env, state = fake_engine
    matrix = tmp_path / "one.toml"
    matrix.write_text(TINY.replace("[1, 200]", "1"))
    out = tmp_path / "out"
    proc = study("--matrix", str(matrix), "--server-command", TEMPLATE.replace("epoll_server_image", "broken_image"),
                 "--out", str(out), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [case] = json.loads((out / "results.json").read_text())["cases"]
    assert case["status"] == "failed"
    assert case["reason"].startswith("server did not start: it exited with status 1")
    assert "broken_image: no such image" in case["reason"]
    assert f"rm --force --ignore --time 0 {case['container']['name']}" in (state / "calls.log").read_text().splitlines()
