"""The image, built once per session from this checkout, for every container test."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from container_helpers import BUILD, CONTAINER, ENV, IMAGE, REPO, podman

from c10k.study.netavark import drop_tables_netavark_made, nft_tables


@pytest.fixture(scope="session")
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
        drop_tables_netavark_made(tables_before)  # they make conntrack track loopback: see the module
        if os.environ.get("C10K_KEEP_IMAGE") != "1":
            podman("rmi", "--force", IMAGE, check=False)
