"""The Docker image, built and run with the original study's own commands, under podman.

    docker build -t epoll_server_image .
    docker run -d -p 8000:7000 --name epoll_server_container epoll_server_image -p 7000

Marked ``container``: left out of ``make test``, run by ``make container-test``
(root, podman, runc and debootstrap needed; ``.ci/run`` installs them). The
stand-in base image is made first when missing (container/make-base-image.sh,
cached; the `image` fixture in conftest.py). Host port 8000 must be free. The built
image is removed at the end of the session unless C10K_KEEP_IMAGE=1.

No systemd runs here, so podman cannot schedule the HEALTHCHECK on a timer;
the test runs it the way that timer would, with ``podman healthcheck run``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest
from container_helpers import CONTAINER, IMAGE, inspect, podman

from helpers import connect_many, read_until_closed, wait_until

pytestmark = pytest.mark.container

HOST_PORT = 8000
RUN = ["run", "-d", "-p", f"{HOST_PORT}:7000", "--name", CONTAINER, IMAGE, "-p", "7000"]
HEAVY = ["numpy", "matplotlib", "psutil", "rich", "uvloop"]


@pytest.fixture
def container(image):
    """The container started with the original's `docker run` line; always removed afterwards."""
    podman(*RUN)
    try:
        yield CONTAINER
    finally:
        podman("rm", "--force", "--ignore", CONTAINER, check=False)


def healthcheck_passes(name: str) -> bool:
    return podman("healthcheck", "run", name, timeout=30, check=False).returncode == 0


def test_image_holds_the_server_and_not_the_study(image):
    probe = ("import importlib.util, json, os, shutil; "
             f"print(json.dumps({{'heavy': [m for m in {HEAVY!r} if importlib.util.find_spec(m)], "
             "'uid': os.getuid(), 'c10k': shutil.which('c10k')}))")
    found = json.loads(podman("run", "--rm", "--entrypoint", "python", image, "-c", probe).stdout)
    assert found["heavy"] == [], "the server needs none of these; the image should not carry them"
    assert found["uid"] != 0
    assert found["c10k"] == "/usr/local/bin/c10k"
    assert inspect("image", image, ".Config.Healthcheck")["Test"][0] == "CMD"


def test_original_command_line_serves_load_and_stops_cleanly(container, tmp_path):
    wait_until(lambda: healthcheck_passes(container), timeout=60, interval=0.5, what="a passing healthcheck")
    assert inspect("container", container, ".State.Health.Status") == "healthy"
    assert "listening on 0.0.0.0:7000" in podman("logs", container).stdout

    # PID 1 is the server itself (exec-form entrypoint), as the non-root user:
    # docker stop's SIGTERM reaches it with no shell in between.
    rows = [line.split(None, 2) for line in podman("top", container, "pid", "user", "args").stdout.splitlines()[1:]]
    pid1 = [row for row in rows if row[0] == "1"]
    assert pid1 and pid1[0][1] == "c10k", rows
    assert pid1[0][2].split()[1:4] == ["/usr/local/bin/c10k", "serve", "epoll"], rows  # python running c10k, no shell

    # The load through the published port: the host's 8000, NATed to the container's 7000.
    out = tmp_path / "load"
    load = subprocess.run([sys.executable, "-m", "c10k", "load", "-p", str(HOST_PORT), "-c", "2000", "-n", "100",
                           "--out", str(out), "--quiet"], capture_output=True, text=True, timeout=300)
    summary = json.loads((out / "summary.json").read_text())
    assert load.returncode == 0, load.stdout + load.stderr
    assert summary["errors"] == {}
    assert summary["connections"]["established"] == 2000
    assert summary["messages"]["echoed"] == 200_000 and summary["messages"]["mismatched"] == 0
    assert healthcheck_passes(container)
    assert inspect("container", container, ".State.Health.Status") == "healthy"

    # docker stop with connections open, each having just had an echo: every one
    # must end with an orderly EOF (not a reset), and the server exit 0 before
    # the stop timeout (else podman kills it and the exit code is 137).
    held = connect_many(("127.0.0.1", HOST_PORT), 300, timeout=60)
    try:
        for number, conn in enumerate(held):
            conn.setblocking(True)
            conn.settimeout(10)
            message = f"held {number}\n".encode()
            conn.sendall(message)
            got = b""
            while len(got) < len(message):
                chunk = conn.recv(len(message) - len(got))
                assert chunk, f"connection {number} closed before its echo"
                got += chunk
            assert got == message
        stopped: list[subprocess.CompletedProcess] = []
        stopper = threading.Thread(target=lambda: stopped.append(podman("stop", container, timeout=60, check=False)))
        stopper.start()
        endings = []
        for conn in held:
            endings.append(read_until_closed(conn, timeout=30)[1])
            conn.close()  # the server drains until our EOF, then closes
        stopper.join(timeout=90)
    finally:
        for conn in held:
            conn.close()
    assert endings == ["eof"] * len(held)
    assert stopped and stopped[0].returncode == 0, stopped and stopped[0].stderr
    assert inspect("container", container, ".State.ExitCode") == 0
    assert "Traceback" not in podman("logs", container).stderr
