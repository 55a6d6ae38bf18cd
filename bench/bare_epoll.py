#!/usr/bin/env python3
"""The floor for a Python epoll echo server: the least such a loop can do.

One process, one edge-triggered epoll, read 64 KiB and write it back, nothing
else (no backpressure, no partial writes, no stats, no shutdown). It is not a
server anyone should run; bench_server_cpu.py measures it next to
`c10k serve epoll --workers 1`, round by round, so the distance between the
two is what our server's features cost and the distance to C is what the
interpreter costs on this machine at that moment.

    python bench/bare_epoll.py PORT
"""

import os
import select
import socket
import sys


def main() -> None:
    listener = socket.create_server(("127.0.0.1", int(sys.argv[1])), backlog=4096)
    listener.setblocking(False)
    ep = select.epoll()
    ep.register(listener.fileno(), select.EPOLLIN)
    lfd = listener.fileno()
    read, write = os.read, os.write
    conn_events = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET
    while True:
        for fd, _ in ep.poll(-1, 1024):
            if fd == lfd:
                try:
                    while True:
                        conn, _ = listener.accept()
                        conn.setblocking(False)
                        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        ep.register(conn.detach(), conn_events)
                except BlockingIOError:
                    pass
                continue
            try:
                data = read(fd, 65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                write(fd, data)
            else:
                ep.unregister(fd)
                os.close(fd)


if __name__ == "__main__":
    main()
