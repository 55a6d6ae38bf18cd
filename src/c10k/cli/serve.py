"""`c10k serve ARCH`: run one echo server until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable

from c10k import capacity
from c10k.errors import UsageError
from c10k.limits import nofile_limits, raise_nofile
from c10k.outputs import check_writable_file
from c10k.servers import ARCHITECTURES, ServerConfig, make_server
from c10k.servers.unix import UNIX_ARCHITECTURES, remove_socket_file

#: the one home of the defaults is ServerConfig; the options show them
DEFAULTS = ServerConfig()

EPILOG = """\
Prints "listening on HOST:PORT" (with --unix: "listening on unix:PATH") once
it accepts connections. SIGTERM or SIGINT stops it gracefully: no new
connections, the echo of everything already read is sent, each connection
gets EOF, exit 0 within --shutdown-timeout.
Exit status: 0 after a clean stop, 1 when it cannot listen (e.g. the port is in
use), 2 for bad arguments.

architectures:
""" + "\n".join(f"  {name:9} {desc}" for name, (_, _, desc) in ARCHITECTURES.items())


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be a number, not {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is out of range 0-65535")
    return value


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= minimum, or a one-line error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a number >= {minimum}, not {value}")
        return value

    return parse


_positive = _at_least(1)
_count = _at_least(0)


def _workers(text: str) -> int:
    value = _positive(text)
    if value > capacity.MAX_SERVER_WORKERS:
        raise argparse.ArgumentTypeError(
            f"at most {capacity.MAX_SERVER_WORKERS} workers (a worker holds up to "
            f"{capacity.connections_per_process(nofile_limits()[1]):,} connections here), not {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, not {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds >= 0, not {text}")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run an echo server of one architecture",
        description="Run an echo server built on one concurrency architecture.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("architecture", metavar="ARCH", choices=list(ARCHITECTURES),
                   help="one of: " + ", ".join(ARCHITECTURES))
    # host and port default to None so that --unix can refuse them when given
    p.add_argument("--host", help=f"address to listen on (default: {DEFAULTS.host})")
    p.add_argument("-p", "--port", type=_port, help=f"port; 0 picks a free one (default: {DEFAULTS.port})")
    p.add_argument("--unix", metavar="PATH",
                   help="listen on a unix-domain socket at PATH instead of TCP (prints \"listening on "
                        "unix:PATH\"); a stale socket file is replaced, one a server listens on is refused, "
                        "and the file is removed at exit. Architectures: " + ", ".join(UNIX_ARCHITECTURES)
                        + "; not with --balance reuseport or --send-timeout (TCP only)")
    p.add_argument("--backlog", type=_positive, default=DEFAULTS.backlog, help="listen backlog (default: %(default)s)")
    p.add_argument("--max-connections", type=_count, default=DEFAULTS.max_connections, metavar="M",
                   help="close connections beyond M at once (default: no limit)")
    p.add_argument("--idle-timeout", type=_seconds, default=DEFAULTS.idle_timeout, metavar="S",
                   help="close a connection with no traffic for S seconds (default: never)")
    p.add_argument("--send-timeout", type=_seconds, default=DEFAULTS.send_timeout, metavar="S",
                   help="close a connection whose peer has taken none of its echoes for S seconds (a departed "
                        "or stuck client; TCP_USER_TIMEOUT). Off by default: a slow reader is also cut off")
    p.add_argument("--shutdown-timeout", type=_seconds, default=DEFAULTS.shutdown_timeout, metavar="S",
                   help="after SIGTERM, exit within S seconds (default: %(default)s)")
    p.add_argument("--stats-file", metavar="FILE", help="write JSON statistics here at exit")
    p.add_argument("--high-watermark", type=_positive, default=DEFAULTS.high_watermark, metavar="BYTES",
                   help="stop reading a connection owed this many bytes (default: %(default)s)")
    p.add_argument("--low-watermark", type=_count, default=DEFAULTS.low_watermark, metavar="BYTES",
                   help="read it again once owed no more than this (default: %(default)s)")
    epoll = p.add_argument_group("epoll")
    epoll.add_argument("--workers", type=_workers, default=None, metavar="N",
                       help="worker event loops (default: the number of CPUs)")
    epoll.add_argument("--max-workers", type=_workers, default=DEFAULTS.max_workers, metavar="N",
                       help="workers the acceptor may grow to when all near their descriptor limit "
                            "(default: %(default)s)")
    epoll.add_argument("--worker-mode", choices=("process", "thread"), default=DEFAULTS.worker_mode,
                       help="workers as processes (default) or threads, as in the original")
    epoll.add_argument("--balance", choices=("handoff", "reuseport"), default=DEFAULTS.balance,
                       help="an acceptor hands sockets to the least-loaded worker (default), or "
                            "each worker process accepts on its own SO_REUSEPORT listener")
    threaded = p.add_argument_group("threaded")
    threaded.add_argument("--stack-size", type=_count, default=DEFAULTS.stack_size, metavar="BYTES",
                          help="stack size of each connection thread (default: the platform's)")
    p.set_defaults(run=run)


def _check_unix(args: argparse.Namespace) -> None:
    """--unix replaces --host/--port and excludes what only TCP has."""
    if not args.unix:
        raise UsageError("--unix needs a path")
    if args.host is not None or args.port is not None:
        raise UsageError("give either --unix or --host/--port, not both")
    if args.architecture not in UNIX_ARCHITECTURES:
        raise UsageError(f"{args.architecture} does not serve unix sockets (--unix works with "
                         f"{', '.join(UNIX_ARCHITECTURES)})")
    if args.balance == "reuseport":
        raise UsageError("--balance reuseport shares a TCP port between listeners; a unix socket has no port "
                         "(use the default hand-off)")
    if args.send_timeout:
        raise UsageError("--send-timeout is TCP_USER_TIMEOUT, which unix sockets do not have")


def run(args: argparse.Namespace) -> int:
    if args.low_watermark > args.high_watermark:
        raise UsageError("--low-watermark must not exceed --high-watermark")
    if args.stats_file:  # found now, not when the server stops
        check_writable_file(args.stats_file, "--stats-file")
    if args.unix is not None:
        _check_unix(args)
    config = ServerConfig(
        host=DEFAULTS.host if args.host is None else args.host,
        port=DEFAULTS.port if args.port is None else args.port,
        unix=args.unix or "",
        backlog=args.backlog,
        max_connections=args.max_connections,
        idle_timeout=args.idle_timeout,
        send_timeout=args.send_timeout,
        shutdown_timeout=args.shutdown_timeout,
        stats_file=args.stats_file,
        high_watermark=args.high_watermark,
        low_watermark=args.low_watermark,
        worker_mode=args.worker_mode,
        balance=args.balance,
        stack_size=args.stack_size,
        max_workers=args.max_workers,
    )
    if args.workers:  # else ServerConfig's: the number of CPUs
        config.workers = args.workers
    raise_nofile()
    server = make_server(args.architecture, config)
    try:
        server.serve()
    finally:
        if config.unix:
            remove_socket_file(config.unix)
    if server.exit_at_once:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0
