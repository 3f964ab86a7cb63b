"""A deadline watchdog: one thread that runs a callback when a deadline passes.

Used for connection lifetimes: each connection with a lifetime budget gets an
entry; when it expires, the connection's socket is shut down.  Entries are
cancelled when the connection ends first (lazy deletion: a cancelled entry
stays in the heap until it reaches the top or the heap is compacted).

The scheduling decision (:meth:`Watchdog.pop_expired`) takes the time as an
argument, so it can be tested with a fake clock and without a thread.
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import time
from collections.abc import Callable

__all__ = ("Watchdog",)


class _Entry:
    __slots__ = ("alive", "callback", "deadline", "seq")

    def __init__(self, deadline: float, seq: int, callback: Callable[[], object]) -> None:
        self.deadline = deadline
        self.seq = seq
        self.callback = callback
        self.alive = True

    def __lt__(self, other: _Entry) -> bool:
        return (self.deadline, self.seq) < (other.deadline, other.seq)


class Watchdog:
    """Runs callbacks at deadlines, from one lazily started daemon thread.

    Safe across ``fork()``: a child that adds an entry gets a fresh thread of
    its own (threads do not survive fork).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[_Entry] = []
        self._dead = 0
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._closed = False

    def add(self, delay: float, callback: Callable[[], object]) -> _Entry:
        """Run *callback* in *delay* seconds unless cancelled; return the entry."""
        entry = _Entry(self._clock() + delay, next(self._seq), callback)
        if self._pid != os.getpid():
            # Forked: the parent's thread is not here, and it may have held
            # the lock at fork time, so start over with a fresh one (the
            # child is single-threaded at this point).
            self._cond = threading.Condition(threading.Lock())
            self._pid, self._thread, self._heap, self._dead = os.getpid(), None, [], 0
        with self._cond:
            heapq.heappush(self._heap, entry)
            if self._heap[0] is entry:
                self._cond.notify()
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._loop, name="composable_server watchdog", daemon=True)
                self._thread.start()
        return entry

    def cancel(self, entry: _Entry) -> None:
        """Forget *entry* (idempotent)."""
        with self._cond:
            if entry.alive:
                entry.alive = False
                self._dead += 1
                if self._dead > 64 and self._dead * 2 > len(self._heap):
                    self._heap = [e for e in self._heap if e.alive]
                    heapq.heapify(self._heap)
                    self._dead = 0

    def pop_expired(self, now: float) -> list[Callable[[], object]]:
        """Remove and return the callbacks of live entries whose deadline is <= *now*."""
        due: list[Callable[[], object]] = []
        with self._cond:
            heap = self._heap
            while heap and heap[0].deadline <= now:
                entry = heapq.heappop(heap)
                if entry.alive:
                    entry.alive = False
                    due.append(entry.callback)
                else:
                    self._dead -= 1
        return due

    def next_deadline(self) -> float | None:
        """The earliest deadline pending (cancelled entries included), or None."""
        with self._cond:
            return self._heap[0].deadline if self._heap else None

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                deadline = self._heap[0].deadline if self._heap else None
                if deadline is None:
                    self._cond.wait()
                    continue
                remaining = deadline - self._clock()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
            for callback in self.pop_expired(self._clock()):
                callback()

    def close(self) -> None:
        """Stop the thread and wait for it; pending entries are dropped.  Idempotent."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread() and self._pid == os.getpid():
            thread.join()
