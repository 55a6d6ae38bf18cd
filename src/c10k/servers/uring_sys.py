"""A thin ctypes layer over Linux's io_uring system calls, for the uring echo server.

Why our own: the ``liburing`` package on the index mirrors C's API but cannot
register a provided-buffer ring and copies every send; ``pyuring`` does not
build against Debian's liburing 2.3. What the server needs is small: set up a
ring (io_uring_setup), map its submission and completion queues, register one
provided-buffer ring (io_uring_register), fill submission entries and enter
the kernel once per loop pass (io_uring_enter). Everything else is memory
shared with the kernel, read and written through memoryviews of the mmaps.

Memory ordering: the kernel reads the tails we publish and writes the tails we
read. On x86-64 (total store order) stores become visible in program order,
so writing an entry and then its tail needs no fence; that is the only
architecture this was built and tested on (``available`` says so elsewhere).

Layouts and constants are those of <linux/io_uring.h>; the comments name them.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import struct

__all__ = ["Ring", "BufferRing", "UringUnavailable", "available", "Completion",
           "OP_NOP", "OP_POLL_ADD", "OP_ACCEPT", "OP_ASYNC_CANCEL", "OP_SEND", "OP_RECV",
           "F_BUFFER", "F_MORE", "BUFFER_SHIFT"]

# System call numbers: the same on every architecture (the unified table, since 5.1).
SYS_SETUP, SYS_ENTER, SYS_REGISTER = 425, 426, 427

# io_uring_setup flags
SETUP_CQSIZE = 1 << 3
SETUP_SUBMIT_ALL = 1 << 7
SETUP_COOP_TASKRUN = 1 << 8
SETUP_SINGLE_ISSUER = 1 << 12
SETUP_DEFER_TASKRUN = 1 << 13
SETUP_NO_SQARRAY = 1 << 16
# features the kernel reports
FEAT_SINGLE_MMAP = 1 << 0
FEAT_NODROP = 1 << 1
FEAT_EXT_ARG = 1 << 8
FEAT_MIN_TIMEOUT = 1 << 15
# io_uring_enter flags
ENTER_GETEVENTS = 1 << 0
ENTER_EXT_ARG = 1 << 3
# sq ring flags
SQ_CQ_OVERFLOW = 1 << 1
# mmap offsets
OFF_SQ_RING, OFF_CQ_RING, OFF_SQES = 0, 0x8000000, 0x10000000
# register opcodes
REGISTER_PBUF_RING = 22
# opcodes
OP_NOP, OP_POLL_ADD, OP_ACCEPT, OP_ASYNC_CANCEL, OP_SEND, OP_RECV = 0, 6, 13, 14, 26, 27
# sqe flags and per-op flags (sqe.ioprio for accept/recv, sqe.len for poll)
SQE_BUFFER_SELECT = 1 << 5
ACCEPT_MULTISHOT = 1 << 0
RECV_MULTISHOT = 1 << 1
POLL_ADD_MULTI = 1 << 0
# cqe flags: the buffer id sits in the upper 16 bits
F_BUFFER, F_MORE, BUFFER_SHIFT = 1 << 0, 1 << 1, 16

# struct io_uring_params: 10 u32 (sq_entries .. resv[3]), io_sqring_offsets, io_cqring_offsets,
# each offsets struct 8 u32 and one u64.
_PARAMS = struct.Struct("10I 8IQ 8IQ")
# struct io_uring_sqe (64 bytes): opcode, flags, ioprio, fd, off, addr, len, op_flags,
# user_data, buf_group, personality, splice_fd_in, addr3, pad
SQE = struct.Struct("BBHiQQIIQHHiQQ")
_SEND = struct.Struct("BBHiQQIIQ")  # the same entry's first 40 bytes
MSG_NOSIGNAL = 0x4000
# struct io_uring_cqe (16 bytes): user_data, res, flags
CQE = struct.Struct("QiI")
# struct io_uring_getevents_arg: sigmask, sigmask_sz, min_wait_usec, ts
_GETEVENTS_ARG = struct.Struct("QIIQ")
# struct io_uring_buf_reg: ring_addr, ring_entries, bgid, flags, resv[3]
_BUF_REG = struct.Struct("QIHH3Q")
# struct io_uring_buf (16 bytes): addr, len, bid, resv (the ring's tail lives in entry 0's resv)
_BUF = struct.Struct("QIH")

Completion = tuple[int, int, int]  # user_data, res, flags


class UringUnavailable(OSError):
    """io_uring cannot be used here (disabled, filtered, too old, or not Linux)."""


_libc = ctypes.CDLL(None, use_errno=True)
# syscall(2) is variadic, but on x86-64 a variadic call passes integers exactly
# as a fixed one does; declaring seven longs makes ctypes fill whole 64-bit
# registers (a bare Python int would go as a 32-bit int, upper half undefined).
_syscall = _libc["syscall"]
_syscall.restype = ctypes.c_long
_syscall.argtypes = [ctypes.c_long] * 7


def _call(number: int, *args: int) -> int:
    res = _syscall(number, *args, *([0] * (6 - len(args))))
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(res)


def _address(buf: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


class Ring:
    """One io_uring instance: a submission queue we fill, a completion queue we reap.

    Args:
        entries: submission queue size (a power of two).
        cq_entries: completion queue size (a power of two, >= entries).
        flags: extra io_uring_setup flags; the server asks for SINGLE_ISSUER and
            DEFER_TASKRUN (completions are produced only when we enter to reap
            them, in our own time, instead of interrupting us) when the kernel has them.
    """

    def __init__(self, entries: int = 256, cq_entries: int = 4096, flags: int = 0) -> None:
        if platform.system() != "Linux":
            raise UringUnavailable("io_uring exists only on Linux")
        params = bytearray(_PARAMS.size)
        struct.pack_into("I", params, 8, SETUP_CQSIZE | flags)  # flags
        struct.pack_into("I", params, 4, cq_entries)  # cq_entries
        pbuf = (ctypes.c_char * len(params)).from_buffer(params)
        try:
            self.fd = _call(SYS_SETUP, entries, ctypes.addressof(pbuf))
        except OSError as exc:
            raise UringUnavailable(exc.errno, f"io_uring_setup: {exc.strerror}") from None
        del pbuf
        p = _PARAMS.unpack(params)
        self.sq_entries, self.cq_entries, self.flags, _, _, self.features = p[:6]
        sq_off, cq_off = p[10:19], p[19:28]
        try:
            self._map(sq_off, cq_off)
        except OSError:
            os.close(self.fd)
            raise
        self._to_submit = 0
        self._sq_tail = self._u32[self._sq_tail_at]
        if not self.flags & SETUP_NO_SQARRAY:
            # The indirection array: slot i holds sqe i, set once.
            for i in range(self.sq_entries):
                self._u32[self._sq_array_at + i] = i
        ts = (ctypes.c_int64 * 2)()
        self._ts = ts
        self._arg = bytearray(_GETEVENTS_ARG.size)
        self._arg_buf = (ctypes.c_char * len(self._arg)).from_buffer(self._arg)
        self.min_wait = bool(self.features & FEAT_MIN_TIMEOUT)

    def _map(self, sq_off: tuple[int, ...], cq_off: tuple[int, ...]) -> None:
        sq_size = sq_off[6] + self.sq_entries * 4  # array's end
        cq_size = cq_off[5] + self.cq_entries * CQE.size  # cqes' end
        if self.features & FEAT_SINGLE_MMAP:
            sq_size = cq_size = max(sq_size, cq_size)
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0x8000)
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        self._sq_mm = mmap.mmap(self.fd, sq_size, flags, prot, offset=OFF_SQ_RING)
        self._cq_mm = (self._sq_mm if self.features & FEAT_SINGLE_MMAP
                       else mmap.mmap(self.fd, cq_size, flags, prot, offset=OFF_CQ_RING))
        self._sqe_mm = mmap.mmap(self.fd, self.sq_entries * SQE.size, flags, prot, offset=OFF_SQES)
        # Offsets are in bytes; every field is a u32, so index u32 views by offset // 4.
        self._u32 = memoryview(self._sq_mm).cast("I")
        self._cq_u32 = memoryview(self._cq_mm).cast("I")
        self._sq_head_at, self._sq_tail_at = sq_off[0] // 4, sq_off[1] // 4
        self._sq_mask = self._u32[sq_off[2] // 4]
        self._sq_flags_at, self._sq_array_at = sq_off[4] // 4, sq_off[6] // 4
        self._cq_head_at, self._cq_tail_at = cq_off[0] // 4, cq_off[1] // 4
        self._cq_mask = self._cq_u32[cq_off[2] // 4]
        self._cq_overflow_at = cq_off[4] // 4
        self._cqes = memoryview(self._cq_mm)[cq_off[5]: cq_off[5] + self.cq_entries * CQE.size]
        self._sqes = self._sqe_mm

    # -- submission ----------------------------------------------------------

    def prep(self, opcode: int, fd: int, user_data: int, addr: int = 0, length: int = 0, op_flags: int = 0,
             ioprio: int = 0, flags: int = 0, buf_group: int = 0, off: int = 0) -> None:
        """Queue one submission entry; it goes to the kernel with the next ``enter``."""
        if self._to_submit >= self.sq_entries:
            self.enter(0)  # the queue is full: hand what is there to the kernel first
        tail = self._sq_tail
        SQE.pack_into(self._sqes, (tail & self._sq_mask) * 64, opcode, flags, ioprio, fd, off, addr, length,
                      op_flags, user_data, buf_group, 0, 0, 0, 0)
        self._sq_tail = (tail + 1) & 0xFFFFFFFF
        self._to_submit += 1

    def send(self, fd: int, addr: int, n: int, user_data: int) -> None:
        """Queue a send of ``n`` bytes at ``addr`` (MSG_NOSIGNAL): ``prep`` for the hot path.

        Only the entry's first 40 bytes are written: every entry this layer
        writes leaves the rest zero (buffer group 0), so the rest is zero already.
        """
        if self._to_submit >= self.sq_entries:
            self.enter(0)
        tail = self._sq_tail
        _SEND.pack_into(self._sqes, (tail & self._sq_mask) << 6, OP_SEND, 0, 0, fd, 0, addr, n, MSG_NOSIGNAL, user_data)
        self._sq_tail = (tail + 1) & 0xFFFFFFFF
        self._to_submit += 1

    @property
    def queued(self) -> int:
        """Entries queued and not yet submitted."""
        return self._to_submit

    def enter(self, wait: int, timeout: float | None = None, min_wait_us: int = 0) -> int:
        """Submit every queued entry and, if ``wait``, wait for that many completions.

        With ``timeout`` the wait ends after that many seconds whatever came.
        With ``min_wait_us`` (kernels with IORING_FEAT_MIN_TIMEOUT) the kernel
        waits that long for ``wait`` completions and then returns as soon as
        there is at least one: a batch without a fixed latency cost.
        Returns the number of entries submitted; EINTR and ETIME are not errors.
        """
        self._u32[self._sq_tail_at] = self._sq_tail  # publish the tail
        n = self._to_submit
        if not self.min_wait and wait > 1:
            wait = 1  # without the min-wait timeout, waiting for a batch could wait for the whole timeout
        flags = ENTER_GETEVENTS if wait or self.needs_flush() else 0
        argp = argsz = 0
        if wait and timeout is not None:
            sec = max(0.0, timeout)
            self._ts[0] = int(sec)
            self._ts[1] = int((sec - int(sec)) * 1e9)
            _GETEVENTS_ARG.pack_into(self._arg, 0, 0, 0, min_wait_us if self.min_wait else 0,
                                     ctypes.addressof(self._ts))
            flags |= ENTER_EXT_ARG
            argp, argsz = ctypes.addressof(self._arg_buf), _GETEVENTS_ARG.size
        res = _syscall(SYS_ENTER, self.fd, n, wait, flags, argp, argsz)
        if res < 0:
            err = ctypes.get_errno()
            if err in (4, 62, 16):  # EINTR, ETIME, EBUSY (completions to reap first)
                res = 0
            else:
                raise OSError(err, os.strerror(err))
        self._to_submit -= res  # what the kernel did not take (EINTR, EBUSY) goes with the next enter
        return int(res)

    def needs_flush(self) -> bool:
        """True when completions overflowed the queue and wait in the kernel (FEAT_NODROP)."""
        return bool(self._u32[self._sq_flags_at] & SQ_CQ_OVERFLOW)

    # -- completion ----------------------------------------------------------

    def completions(self) -> list[Completion]:
        """Every completion in the queue, oldest first, copied out (their slots are the kernel's again).

        Overflowed completions are brought in by entering the kernel again, so a
        caller has seen everything that completed.
        """
        u32 = self._cq_u32
        got: list[Completion] = []
        for _ in range(64):
            head = u32[self._cq_head_at]
            tail = u32[self._cq_tail_at]
            if head == tail:
                if not self.needs_flush():
                    break
                self.enter(0)  # GETEVENTS: move overflowed completions into the queue
                continue
            mask = self._cq_mask
            start, end = head & mask, tail & mask
            cqes = self._cqes
            if start < end:
                got += CQE.iter_unpack(cqes[start * 16: end * 16])
            else:  # wrapped around the end of the array
                got += CQE.iter_unpack(cqes[start * 16:])
                if end:
                    got += CQE.iter_unpack(cqes[: end * 16])
            u32[self._cq_head_at] = tail
        return got

    def overflowed(self) -> int:
        """Completions the kernel had to drop (zero with FEAT_NODROP unless memory ran out)."""
        return int(self._cq_u32[self._cq_overflow_at])

    def register(self, opcode: int, arg: int, nr: int) -> int:
        return _call(SYS_REGISTER, self.fd, opcode, arg, nr)

    def close(self) -> None:
        if self.fd < 0:
            return
        del self._cqes, self._u32, self._cq_u32
        for mm in {id(m): m for m in (self._sqe_mm, self._cq_mm, self._sq_mm)}.values():
            mm.close()
        os.close(self.fd)
        self.fd = -1


class BufferRing:
    """A provided-buffer ring: buffers the kernel picks from when a receive completes.

    ``count`` buffers of ``size`` bytes in one anonymous mapping (pages cost
    memory once touched). A receive that names the group takes the next
    buffer; the completion says which (its id). Give it back with ``give``
    and publish with ``publish`` (once per loop pass).
    """

    def __init__(self, ring: Ring, group: int = 0, count: int = 256, size: int = 16384) -> None:
        if count & (count - 1) or not 0 < count <= 32768:
            raise ValueError("the buffer count must be a power of two up to 32768")
        self.group, self.count, self.size = group, count, size
        self.mask = count - 1
        self._ring_mm = mmap.mmap(-1, max(mmap.PAGESIZE, count * 16))
        self._mem = mmap.mmap(-1, count * size)
        self.base = _address(self._mem)
        self.memory = memoryview(self._mem)
        self._entries = self._ring_mm
        self._tail_view = memoryview(self._ring_mm).cast("H")
        reg = bytearray(_BUF_REG.size)
        _BUF_REG.pack_into(reg, 0, _address(self._ring_mm), count, group, 0, 0, 0, 0)
        regbuf = (ctypes.c_char * len(reg)).from_buffer(reg)
        try:
            ring.register(REGISTER_PBUF_RING, ctypes.addressof(regbuf), 1)
        except OSError as exc:
            raise UringUnavailable(exc.errno, f"cannot register a buffer ring: {exc.strerror}") from None
        finally:
            del regbuf
        self.tail = 0
        for bid in range(count):
            self.give(bid)
        self.publish()

    def give(self, bid: int) -> None:
        """Hand buffer ``bid`` back to the kernel (visible after ``publish``)."""
        _BUF.pack_into(self._entries, (self.tail & self.mask) * 16, self.base + bid * self.size, self.size, bid)
        self.tail = (self.tail + 1) & 0xFFFF

    def give_all(self, bids: list[int]) -> None:
        """Hand these buffers back and publish them at once."""
        tail, mask, entries, base, size = self.tail, self.mask, self._entries, self.base, self.size
        pack = _BUF.pack_into
        for bid in bids:
            pack(entries, (tail & mask) << 4, base + bid * size, size, bid)
            tail += 1
        self.tail = tail & 0xFFFF
        self._tail_view[7] = self.tail

    def publish(self) -> None:
        self._tail_view[7] = self.tail  # entry 0's resv field, at byte 14

    def address(self, bid: int) -> int:
        return self.base + bid * self.size

    def close(self) -> None:
        del self._tail_view, self.memory
        self._ring_mm.close()
        self._mem.close()


def available() -> str | None:
    """None if io_uring works here (a ring and a buffer ring can be set up), else why not, in words."""
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            if f.read().strip() == "2":
                return "io_uring is disabled on this machine (kernel.io_uring_disabled = 2)"
    except OSError:
        pass
    if platform.machine() not in ("x86_64", "AMD64"):
        return f"the uring server's ring layer is built for x86-64, not {platform.machine()}"
    try:
        ring = Ring(8, 16)
    except UringUnavailable as exc:
        return f"io_uring cannot be set up here ({exc.strerror or exc})"
    try:
        BufferRing(ring, count=1, size=16).close()
    except UringUnavailable as exc:
        return f"io_uring is too old here: {exc.strerror}"
    finally:
        ring.close()
    return None
