"""A connection served by blocking calls: the threaded server's, and gevent's.

Both give each connection its own thread of control that blocks in recv() and
sendall(); a blocked sendall() is the backpressure, so a connection owed
echoes stops reading and costs the server one read (64 KiB) at most.

Stopping without losing echoes: the stopping side cannot interrupt a recv(),
and shutdown(SHUT_RD) would make later client bytes answer with a reset.
Instead each connection has a lock held while an echo is being written. The
stopping side marks the connection stopping and, if no echo is in progress,
shuts its write side itself; otherwise the connection does it right after its
echo. Either way it then discards what the client still sends until its EOF,
so the client reads every echo and then EOF. (Under gevent the lock is never
contended: only the connection's greenlet takes it blocking, and greenlets
switch only where they block.)
"""

from __future__ import annotations

import socket
import threading
from typing import Any

__all__ = ["BlockingConn", "echo_until_eof", "READ_SIZE"]

READ_SIZE = 65536


class BlockingConn:
    __slots__ = ("sock", "lock", "stopping", "shut")

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.stopping = False
        self.shut = False

    def stop(self) -> None:
        """From the stopping side: shut the write side unless an echo is in flight."""
        self.stopping = True
        if self.lock.acquire(blocking=False):
            try:
                self.shut_write()
            finally:
                self.lock.release()

    def shut_write(self) -> None:
        if not self.shut:
            self.shut = True
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass


def echo_until_eof(conn: BlockingConn, idle_timeout: float) -> tuple[int, bool]:
    """Echo what the client sends until its EOF, an error or ``idle_timeout`` (0: none)
    without traffic; the caller closes the socket.

    Returns:
        the bytes echoed, and whether the idle timeout ended the connection.
    """
    sock = conn.sock
    echoed = 0
    try:
        if idle_timeout:  # else the accepted socket blocks already
            sock.settimeout(idle_timeout)
        while True:
            data = sock.recv(READ_SIZE)
            if not data:
                break  # the client's EOF: everything it sent is echoed
            with conn.lock:
                if not conn.stopping:
                    sock.sendall(data)
                    echoed += len(data)
                if conn.stopping:
                    conn.shut_write()  # then discard until the client's EOF
    except TimeoutError as exc:
        # socket.timeout (no errno) is --idle-timeout; ETIMEDOUT, also a
        # TimeoutError, is the kernel's --send-timeout (TCP_USER_TIMEOUT).
        return echoed, exc.errno is None and not conn.stopping
    except OSError:
        pass
    return echoed, False
