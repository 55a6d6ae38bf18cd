"""The image's HEALTHCHECK: one real echo through the server's own listening socket.

Runs inside the container, standard library only. The server's port is whatever
the user gave after the image name (`-p 7000`), so it is not known here; instead
the listening TCP sockets are read from /proc/net/tcp{,6}, which inside the
container's network namespace hold only the server's. Exit 0 when a message
came back byte for byte, 1 (with one line on stdout, kept by the engine) otherwise.
"""

import os
import socket
import sys

LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's hexadecimal state column
TIMEOUT_S = 3.0


def _address(hex_ip: str) -> str:
    # /proc/net/tcp prints each 32-bit word of the address in host (little-endian) order.
    raw = bytes.fromhex(hex_ip)
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, raw)


def listening() -> list[tuple[str, int]]:
    """(address to connect to, port) of every listening TCP socket here."""
    found = []
    for table, anywhere, loopback in (("/proc/net/tcp", "0.0.0.0", "127.0.0.1"), ("/proc/net/tcp6", "::", "::1")):
        try:
            with open(table) as rows:
                next(rows)
                for row in rows:
                    local, state = row.split()[1], row.split()[3]
                    if state == LISTEN:
                        hex_ip, hex_port = local.split(":")
                        ip = _address(hex_ip)
                        found.append((loopback if ip == anywhere else ip, int(hex_port, 16)))
        except FileNotFoundError:  # no IPv6 in this namespace
            continue
    return found


def echo(address: tuple[str, int]) -> None:
    message = b"healthcheck " + os.urandom(8).hex().encode()
    with socket.create_connection(address, timeout=TIMEOUT_S) as conn:
        conn.sendall(message)
        received = b""
        while len(received) < len(message):
            chunk = conn.recv(len(message) - len(received))
            if not chunk:
                raise ConnectionError(f"closed after {len(received)} of {len(message)} bytes")
            received += chunk
    if received != message:
        raise ConnectionError(f"echo differs: sent {message!r}, got {received!r}")


def main() -> int:
    sockets = listening()
    if not sockets:
        print("unhealthy: nothing listens on TCP")
        return 1
    try:
        echo(sockets[0])
    except OSError as error:
        print(f"unhealthy: {sockets[0][0]}:{sockets[0][1]}: {error}")
        return 1
    print(f"healthy: echo on {sockets[0][0]}:{sockets[0][1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
