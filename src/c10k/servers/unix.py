"""A listening unix-domain socket (``c10k serve ARCH --unix PATH``): its file, found stale or busy, and removed.

A unix socket's address is a file that outlives the server that bound it: a
server killed with SIGKILL leaves it behind, and the next bind() fails with
EADDRINUSE though nothing listens. Removing whatever is there would be as wrong:
a second server would silently steal the path from a live one (the old one keeps
its listener, unreachable). So the file is tested the only reliable way, with a
connect(): refused means stale (removed), accepted means busy (refused here).
At exit the file is removed only by the process that created it and only if it
is still the same file (same inode), not one another server put there since.
"""

from __future__ import annotations

import errno
import os
import socket
import stat

from c10k.errors import C10kError
from c10k.text import unix_address

__all__ = ["UNIX_ARCHITECTURES", "open_unix_listener", "remove_socket_file"]

#: Architectures that serve a unix socket (``--unix``), and why the others do not.
UNIX_ARCHITECTURES = ("threaded", "select", "poll", "epoll", "asyncio", "uvloop", "gevent", "trio", "uring")

#: path -> (pid, inode) of each socket file this process created
_OWNED: dict[str, tuple[int, int]] = {}


def _listening(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2.0)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except BlockingIOError:  # EAGAIN: its accept queue is full, so a server is there
            return True
        except OSError as exc:
            raise C10kError(f"cannot test {path} for a listening server: {exc.strerror}") from None
    return True


def _clear_stale(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise C10kError(f"--unix {path} exists and is not a socket; not removing it")
    if _listening(path):
        raise C10kError(f"a server already listens on {unix_address(path)}")
    os.unlink(path)  # left by a server that did not exit cleanly: nothing listens there


def open_unix_listener(path: str, backlog: int) -> socket.socket:
    """A non-blocking listening unix stream socket at ``path``, or a one-line C10kError."""
    _clear_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        _OWNED[path] = (os.getpid(), os.stat(path).st_ino)
        sock.listen(max(backlog, 1))  # capped at net.core.somaxconn, as for TCP
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:  # created between the test and the bind
            raise C10kError(f"{unix_address(path)} is already in use") from None
        raise C10kError(f"cannot listen on {unix_address(path)}: {exc.strerror}") from None
    return sock


def remove_socket_file(path: str) -> None:
    """Remove ``path`` if this process created it and it is still that file."""
    owner = _OWNED.get(path)
    if owner is None or owner[0] != os.getpid():
        return  # a forked worker, or a listener that was never opened here
    try:
        if os.lstat(path).st_ino == owner[1]:
            os.unlink(path)
    except FileNotFoundError:
        pass
    del _OWNED[path]
