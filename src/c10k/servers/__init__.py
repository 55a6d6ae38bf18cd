"""Echo servers, one per concurrency architecture, chosen in one place.

>>> from c10k.servers import ServerConfig, make_server
>>> make_server("epoll", ServerConfig(port=0)).serve()   # until SIGTERM
"""

from __future__ import annotations

import importlib

from c10k.errors import C10kError, UsageError
from c10k.servers.base import Server, ServerConfig, Stats

__all__ = ["ARCHITECTURES", "ServerConfig", "Server", "Stats", "make_server"]

#: name -> (module, class or factory, one-line description); modules load on demand so
#: `c10k serve select` never imports uvloop.
ARCHITECTURES: dict[str, tuple[str, str, str]] = {
    "threaded": ("c10k.servers.threaded", "ThreadedServer", "a thread per connection (the original's first server)"),
    "select": ("c10k.servers.polling", "SelectServer", "one thread on select(); descriptors >= 1024 are refused"),
    "poll": ("c10k.servers.polling", "PollServer", "one thread on poll()"),
    "epoll": ("c10k.servers.epoll", "epoll_server",
              "an acceptor handing sockets to N edge-triggered epoll workers (or SO_REUSEPORT)"),
    "asyncio": ("c10k.servers.aio", "AsyncioServer", "an asyncio Protocol server on the standard loop"),
    "uvloop": ("c10k.servers.aio", "UvloopServer", "an asyncio Protocol server on uvloop"),
    "gevent": ("c10k.servers.gevent_server", "GeventServer", "gevent's StreamServer: a greenlet per connection"),
    "trio": ("c10k.servers.trio_server", "TrioServer", "trio.serve_listeners: a task per connection"),
    "uring": ("c10k.servers.uring", "uring_server",
              "epoll's workers, each on an io_uring ring: multishot accept/receive, provided buffers"),
}


def make_server(architecture: str, config: ServerConfig) -> Server:
    """The server for ``architecture`` (a key of ARCHITECTURES), not yet serving."""
    try:
        module, cls, _ = ARCHITECTURES[architecture]
    except KeyError:
        raise UsageError(
            f"unknown architecture {architecture!r} (choose from {', '.join(ARCHITECTURES)})"
        ) from None
    try:
        factory = getattr(importlib.import_module(module), cls)
    except ModuleNotFoundError as exc:  # an optional package (gevent, trio): c10k[servers]
        if not exc.name or exc.name.split(".")[0] == "c10k":
            raise
        raise C10kError(f"{architecture} needs {exc.name}, which is not installed here: "
                        "pip install 'c10k[servers]'") from None
    server: Server = factory(config)
    return server
