"""The Docker image, built and run with the original study's own commands, under podman.

    docker build -t epoll_server_image .
    docker run -d -p 8000:7000 --name epoll_server_container epoll_server_image -p 7000

Marked ``container``: left out of ``make test``, run by ``make container-test``
(root, podman, runc and debootstrap needed; ``.ci/run`` installs them). The
stand-in base image is made first when missing (container/make-base-image.sh,
cached). Host port 8000 must be free. The built image is removed at the end
unless C10K_KEEP_IMAGE=1.

No systemd runs here, so podman cannot schedule the HEALTHCHECK on a timer;
the test runs it the way that timer would, with ``podman healthcheck run``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from helpers import connect_many, read_until_closed, wait_until

pytestmark = pytest.mark.container

REPO = Path(__file__).resolve().parents[2]
IMAGE = "epoll_server_image"
CONTAINER = "epoll_server_container"
HOST_PORT = 8000
# The original's commands, argument for argument (podman takes Docker's command line).
BUILD = ["build", "-t", IMAGE, "."]
RUN = ["run", "-d", "-p", f"{HOST_PORT}:7000", "--name", CONTAINER, IMAGE, "-p", "7000"]
ENV = {
    # runc, and ulimits this machine allows (see the file).
    "CONTAINERS_CONF": str(REPO / "container" / "containers.conf"),
    # podman builds OCI images by default, and OCI images drop HEALTHCHECK.
    "BUILDAH_FORMAT": "docker",
}
HEAVY = ["numpy", "matplotlib", "psutil", "rich", "uvloop"]


def podman(*args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["podman", *args], cwd=REPO, env={**os.environ, **ENV}, capture_output=True,
                          text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
    return done


def inspect(kind: str, name: str, template: str):
    """``podman {image|container} inspect``, one field as JSON."""
    return json.loads(podman(kind, "inspect", name, "--format", f"{{{{json {template}}}}}").stdout)


# Publishing a port makes netavark (podman's network backend) create the host's
# nftables `ip nat` and `ip filter` tables; they outlive the container, and while
# they exist the kernel tracks every connection on the machine in conntrack,
# loopback included (nf_conntrack_max is 262,144 here), which the loopback
# studies should not pay for. So the tables this test made are removed when it
# ends, if they hold nothing but netavark's chains; podman makes them again.
BASE_CHAINS = {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}


def nft(*args: str) -> str:
    return subprocess.run(["nft", *args], capture_output=True, text=True, timeout=30).stdout


def nft_tables() -> set[str]:
    if shutil.which("nft") is None:
        return set()
    return {line.split(None, 1)[1] for line in nft("list", "tables").splitlines() if line.startswith("table ")}


def drop_tables_netavark_made(before: set[str]) -> None:
    for table in sorted(nft_tables() - before):
        chains = {line.split()[1] for line in nft("list", "table", *table.split()).splitlines()
                  if line.strip().startswith("chain ")}
        if all(chain in BASE_CHAINS or chain.startswith("NETAVARK") for chain in chains):
            nft("delete", "table", *table.split())


@pytest.fixture(scope="module")
def image():
    """The image built from this checkout with `docker build -t epoll_server_image .`."""
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed: .ci/run installs it (apt-get install podman runc debootstrap)")
    tables_before = nft_tables()
    base = subprocess.run([str(REPO / "container" / "make-base-image.sh")], env={**os.environ, **ENV},
                          capture_output=True, text=True, timeout=900)
    assert base.returncode == 0, f"making the base image failed:\n{base.stdout}\n{base.stderr}"
    podman("rm", "--force", "--ignore", CONTAINER)  # left by a run that was killed
    podman("rmi", "--force", "--ignore", IMAGE)  # else a rebuild leaves the old one dangling
    podman(*BUILD, timeout=600)
    try:
        yield IMAGE
    finally:
        podman("rm", "--force", "--ignore", CONTAINER, check=False)
        drop_tables_netavark_made(tables_before)
        if os.environ.get("C10K_KEEP_IMAGE") != "1":
            podman("rmi", "--force", IMAGE, check=False)


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
