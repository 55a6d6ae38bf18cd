"""The system calls a Reactor waits with: one Poller subclass each (as selectors does).

Edge-triggered epoll for the epoll workers; level-triggered poll and select
for the single-thread servers (select cannot watch descriptors >= FD_SETSIZE).
"""

from __future__ import annotations

import select

__all__ = ["Poller", "EpollPoller", "PollPoller", "SelectPoller", "IN", "OUT", "ERR", "RDHUP", "READ_EVENTS"]

IN = select.POLLIN
OUT = select.POLLOUT
ERR = select.POLLERR | select.POLLHUP
RDHUP = 0x2000  # POLLRDHUP == EPOLLRDHUP on Linux
READ_EVENTS = IN | ERR | RDHUP

class Poller:
    """The calls a Reactor needs; one subclass per system call (like selectors)."""

    edge_triggered = False

    def add_control(self, fd: int) -> None:
        """Watch a listener, wake or inbox descriptor for reading, level-triggered."""
        raise NotImplementedError

    def add(self, fd: int) -> None:
        """Watch a new connection for reading."""
        raise NotImplementedError

    def interest(self, fd: int, read: bool, write: bool) -> None:
        raise NotImplementedError

    def remove(self, fd: int) -> None:
        raise NotImplementedError

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class EpollPoller(Poller):
    edge_triggered = True
    CONN = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET

    def __init__(self) -> None:
        self._ep = select.epoll()
        self.poll = self._poll  # type: ignore[method-assign]

    def add_control(self, fd: int) -> None:
        self._ep.register(fd, select.EPOLLIN)

    def add(self, fd: int) -> None:
        self._ep.register(fd, self.CONN)

    def interest(self, fd: int, read: bool, write: bool) -> None:
        # Edge-triggered: reading interest never changes, only EPOLLOUT does.
        self._ep.modify(fd, self.CONN | select.EPOLLOUT if write else self.CONN)

    def remove(self, fd: int) -> None:
        try:
            self._ep.unregister(fd)
        except (OSError, ValueError):
            pass

    def _poll(self, timeout: float) -> list[tuple[int, int]]:
        return self._ep.poll(timeout, 1024)

    def close(self) -> None:
        self._ep.close()


class PollPoller(Poller):
    def __init__(self) -> None:
        self._p = select.poll()

    def add_control(self, fd: int) -> None:
        self._p.register(fd, IN)

    def add(self, fd: int) -> None:
        self._p.register(fd, IN)

    def interest(self, fd: int, read: bool, write: bool) -> None:
        self._p.modify(fd, (IN if read else 0) | (OUT if write else 0))

    def remove(self, fd: int) -> None:
        try:
            self._p.unregister(fd)
        except KeyError:
            pass

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        return self._p.poll(timeout * 1000)


class SelectPoller(Poller):
    """select(2) through the same calls. It cannot watch descriptors >= FD_SETSIZE."""

    def __init__(self) -> None:
        self._readers: set[int] = set()
        self._writers: set[int] = set()

    def add_control(self, fd: int) -> None:
        self._readers.add(fd)

    def add(self, fd: int) -> None:
        self._readers.add(fd)

    def interest(self, fd: int, read: bool, write: bool) -> None:
        (self._readers.add if read else self._readers.discard)(fd)
        (self._writers.add if write else self._writers.discard)(fd)

    def remove(self, fd: int) -> None:
        self._readers.discard(fd)
        self._writers.discard(fd)

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        r, w, _ = select.select(self._readers, self._writers, [], timeout)
        if not w:
            return [(fd, IN) for fd in r]
        events = dict.fromkeys(r, IN)
        for fd in w:
            events[fd] = events.get(fd, 0) | OUT
        return list(events.items())
