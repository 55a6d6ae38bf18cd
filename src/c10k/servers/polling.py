"""One thread, one reactor: the select() and poll() servers.

select() is the original study's second design. Its fd_set holds descriptors
0..FD_SETSIZE-1 (1024) and writing a larger one into it is undefined behaviour
(Python raises ValueError). The original server crashed at 2000 clients; this
one closes each connection whose descriptor it cannot watch, counts it, logs
once per burst and serves the rest.
"""

from __future__ import annotations

from c10k.limits import FD_SETSIZE
from c10k.servers.base import Server, ShutdownSignal, announce, open_listener
from c10k.servers.pollers import Poller, PollPoller, SelectPoller
from c10k.servers.reactor import Reactor
from c10k.servers.refusals import Refusal

__all__ = ["SelectServer", "PollServer", "SingleReactorServer"]


class SelectReactor(Reactor):
    def admit(self, fd: int) -> bool:
        if fd >= FD_SETSIZE:
            self.refusals.refuse(Refusal.FD_SETSIZE, f"descriptor {fd}")
            return False
        return super().admit(fd)


class SingleReactorServer(Server):
    """Accept and echo in one thread on one poller."""

    poller_class: type[Poller] = PollPoller
    reactor_class: type[Reactor] = Reactor

    def serve(self) -> None:
        listener = open_listener(self.config)
        shutdown = ShutdownSignal()
        reactor = self.reactor_class(self.poller_class(), self.config, self.stats, listener, shutdown)
        announce(listener.getsockname())
        reactor.run()
        shutdown.close()
        self.write_stats()


class SelectServer(SingleReactorServer):
    name = "select"
    poller_class = SelectPoller
    reactor_class = SelectReactor


class PollServer(SingleReactorServer):
    name = "poll"
    poller_class = PollPoller
