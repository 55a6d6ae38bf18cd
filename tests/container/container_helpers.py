"""podman with this repository's settings, for the container tests."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
IMAGE = "epoll_server_image"
CONTAINER = "epoll_server_container"
# The original's commands, argument for argument (podman takes Docker's command line).
BUILD = ["build", "-t", IMAGE, "."]
ENV = {
    # runc, and ulimits this machine allows (see the file).
    "CONTAINERS_CONF": str(REPO / "container" / "containers.conf"),
    # podman builds OCI images by default, and OCI images drop HEALTHCHECK.
    "BUILDAH_FORMAT": "docker",
}


def podman(*args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["podman", *args], cwd=REPO, env={**os.environ, **ENV}, capture_output=True,
                          text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
    return done


def inspect(kind: str, name: str, template: str):
    """``podman {image|container} inspect``, one field as JSON."""
    return json.loads(podman(kind, "inspect", name, "--format", f"{{{{json {template}}}}}").stdout)
