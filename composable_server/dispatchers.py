"""Dispatchers: where a job runs, and how many run at once.

* :class:`SyncDispatcher` - in the serving thread, one at a time (stdlib
  ``TCPServer``);
* :class:`ThreadingDispatcher` - a thread per job (stdlib ``ThreadingMixIn``),
  finished threads reaped as it goes, so its bookkeeping never grows;
* :class:`ThreadPoolDispatcher` - a bounded pool of reused worker threads
  with a bounded queue; when full it either applies backpressure (stops
  accepting: the kernel backlog holds the rest) or rejects at once;
* :class:`ForkingDispatcher` - a child process per job (stdlib
  ``ForkingMixIn``), at most *max_children* at once, children reaped without
  zombies, and only its own children: it never calls ``waitpid(-1)``, which
  would steal other children's exit statuses.

Every concurrent dispatcher takes the same capacity vocabulary:
``when_full="backpressure"`` (``dispatch`` blocks until a slot frees, so the
serving loop stops accepting) or ``"reject"`` (the job is closed at once,
after sending ``reject_message`` if one is set).
"""

from __future__ import annotations

import gc
import importlib
import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Final, Literal, TypeAlias, cast, final

import attrs

from . import _fork
from .exceptions import ServerClosedError
from .interfaces import Job

__all__ = (
    "DEFAULT_MAX_CHILDREN",
    "ForkingDispatcher",
    "PoolStatistics",
    "SyncDispatcher",
    "ThreadPoolDispatcher",
    "ThreadingDispatcher",
    "WhenFull",
)

WhenFull: TypeAlias = Literal["backpressure", "reject"]
"""What a dispatcher at capacity does with a new job."""

_WHEN_FULL: Final = ("backpressure", "reject")


def _check_when_full(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in _WHEN_FULL:
        raise ValueError(f"when_full must be 'backpressure' or 'reject', got {value!r}")

# stdlib ForkingMixIn.max_children.
DEFAULT_MAX_CHILDREN: Final = 40


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


@final
@attrs.define(eq=False)
class SyncDispatcher:
    """Runs each job in the calling (serving) thread, to completion."""

    _closed: bool = attrs.field(init=False, default=False)

    def dispatch(self, job: Job) -> None:
        """Run *job* now.

        Raises:
            ServerClosedError: after :meth:`close`.
        """
        if self._closed:
            raise ServerClosedError("SyncDispatcher is closed")
        job.run()

    def service(self) -> None:
        """Nothing to do."""

    def join(self, timeout: float | None) -> tuple[Job, ...]:
        """Nothing is ever in flight between dispatches: returns ``()``."""
        return ()

    def close(self) -> None:
        """Refuse further jobs.  Idempotent."""
        self._closed = True

    def __repr__(self) -> str:
        return f"<SyncDispatcher{' closed' if self._closed else ''}>"


@final
@attrs.define(eq=False)
class ThreadingDispatcher:
    """Runs each job in a new thread.

    Args:
        daemon: make the threads daemonic (the interpreter does not wait for
            them at exit; stdlib ``daemon_threads``).
        block_on_close: :meth:`close` waits for non-daemon threads (stdlib
            ``block_on_close``).
        max_threads: at most this many jobs at once (None: no cap, as stdlib).
        when_full: at the cap, ``"backpressure"`` blocks :meth:`dispatch`
            until a thread finishes; ``"reject"`` closes the job at once.
        reject_message: sent to a rejected client before closing.
    """

    daemon: bool = False
    block_on_close: bool = True
    max_threads: int | None = attrs.field(
        default=None, kw_only=True, validator=attrs.validators.optional(attrs.validators.ge(1))
    )
    when_full: WhenFull = attrs.field(default="backpressure", kw_only=True, validator=_check_when_full)
    reject_message: bytes = attrs.field(default=b"", kw_only=True)
    # A plain lock (entered in C; a threading.Condition's own __enter__ and
    # __exit__ are Python calls on an RLock, three times per request); dispatch
    # at the cap waits on _room, notified only while someone waits there.
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    _room: threading.Condition = attrs.field(init=False)
    _room_waiters: int = attrs.field(init=False, default=0)
    _active: dict[threading.Thread, Job] = attrs.field(init=False, factory=dict)
    _rejected: int = attrs.field(init=False, default=0)
    # Threads whose job ended but which may not have exited yet; joined (at
    # once, in practice) by the next dispatch, so the bookkeeping stays at the
    # number of running jobs (stdlib bpo-37193 leaked one Thread per request).
    _finished: list[threading.Thread] = attrs.field(init=False, factory=list)
    _closed: bool = attrs.field(init=False, default=False)

    @_room.default
    def _make_room(self) -> threading.Condition:
        return threading.Condition(self._lock)

    def dispatch(self, job: Job) -> None:
        """Start a thread that runs *job*.

        Raises:
            ServerClosedError: after :meth:`close`.
            RuntimeError: the thread could not be started (the caller still
                owns the job).
        """
        if self._closed:
            raise ServerClosedError("ThreadingDispatcher is closed")
        self._reap()
        thread = threading.Thread(target=self._run, args=(job,), daemon=self.daemon)
        with self._lock:
            cap = self.max_threads
            if cap is not None and len(self._active) >= cap:
                if self.when_full == "reject":
                    self._rejected += 1
                    job.close(self.reject_message)
                    return
                self._room_waiters += 1
                try:
                    while len(self._active) >= cap and not self._closed:
                        self._room.wait()
                finally:
                    self._room_waiters -= 1
                if self._closed:
                    raise ServerClosedError("ThreadingDispatcher was closed while waiting for capacity")
            self._active[thread] = job
        try:
            thread.start()
        except BaseException:
            with self._lock:
                del self._active[thread]
            raise

    def _run(self, job: Job) -> None:
        try:
            job.run()
        finally:
            me = threading.current_thread()
            with self._lock:
                self._active.pop(me, None)
                self._finished.append(me)
                if self._room_waiters:
                    self._room.notify()

    def _reap(self) -> None:
        finished = self._finished
        if finished:
            with self._lock:
                # Emptied in place: assigning the attribute would run attrs'
                # validating __setattr__ (four Python calls).
                done = finished.copy()
                finished.clear()
            for thread in done:
                thread.join()

    def service(self) -> None:
        """Join threads whose job has finished."""
        self._reap()

    def join(self, timeout: float | None) -> tuple[Job, ...]:
        """Wait up to *timeout* seconds for every running job's thread.

        Returns:
            The jobs whose thread is still running.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            threads = list(self._active) + self._finished
        for thread in threads:
            thread.join(_remaining(deadline))
        self._reap()
        with self._lock:
            return tuple(job for thread, job in self._active.items() if thread.is_alive())

    def close(self) -> None:
        """Refuse further jobs; if *block_on_close*, wait for the non-daemon
        threads (daemon threads are left running, as in stdlib).  Idempotent."""
        with self._lock:
            self._closed = True
            self._room.notify_all()
        if self.block_on_close and not self.daemon:
            self.join(None)
        else:
            self._reap()

    @property
    def running(self) -> int:
        """The number of jobs running now."""
        with self._lock:
            return len(self._active)

    @property
    def rejected(self) -> int:
        """Jobs rejected at the cap so far."""
        return self._rejected

    @property
    def threads(self) -> tuple[threading.Thread, ...]:
        """The threads not yet joined: those running a job, and those whose
        job ended that the next dispatch (or :meth:`service`) joins."""
        with self._lock:
            return (*self._active, *self._finished)

    def __repr__(self) -> str:
        flags = "daemon" if self.daemon else "non-daemon"
        cap = "" if self.max_threads is None else f"/{self.max_threads}"
        rejected = f", {self._rejected} rejected" if self._rejected else ""
        state = " closed" if self._closed else ""
        return f"<ThreadingDispatcher [{self.running}{cap} running{rejected}, {flags}]{state}>"


@final
class _Child:
    """The parent's handle on a job running in a child process."""

    __slots__ = ("client_address", "pid")

    def __init__(self, pid: int, client_address: object) -> None:
        self.pid = pid
        self.client_address = client_address

    def run(self) -> bool:
        raise RuntimeError("a job running in a child process cannot be run again")

    def close(self, message: bytes = b"") -> None:
        """Nothing: the parent's copy of the request was closed at fork time."""

    def abort(self) -> None:
        """Ask the child to stop (SIGTERM; children run with the default action)."""
        _fork.kill(self.pid, signal.SIGTERM)

    def __repr__(self) -> str:
        return f"<child {self.pid} serving {self.client_address!r}>"


# The C functions under signal.getsignal() and signal.signal(): handlers as
# ints (SIG_DFL 0, SIG_IGN 1) or callables.  The wrappers convert through
# enum.py, Python code whose refcount writes cost page faults after every
# fork (and ~20k instructions per call in the child).
_c_signal: Final = importlib.import_module("_signal")
_getsignal: Final = cast("Callable[[int], object]", _c_signal.getsignal)
_setsignal: Final = cast("Callable[[int, object], object]", _c_signal.signal)
_gc_count: Final = gc.get_count
_gc_threshold: Final = gc.get_threshold
_gc_collect: Final = gc.collect
_gc_enabled: Final = gc.isenabled
_SIGTERM: Final = int(signal.SIGTERM)
_SIGINT: Final = int(signal.SIGINT)
_DEFAULT_INT: Final = signal.default_int_handler
_Resets: TypeAlias = "tuple[tuple[int, object], ...]"
_RESET_TERM: Final[_Resets] = ((_SIGTERM, 0),)
_RESET_INT: Final[_Resets] = ((_SIGINT, _DEFAULT_INT),)
# [SIGTERM differs][SIGINT differs]: built once, no tuple per fork.
_RESETS: Final[tuple[tuple[_Resets, _Resets], tuple[_Resets, _Resets]]] = (
    ((), _RESET_INT),
    (_RESET_TERM, _RESET_TERM + _RESET_INT),
)


@final
@attrs.define(eq=False)
class ForkingDispatcher:
    """Runs each job in a forked child process.

    The parent closes its copy of the request at once; the child serves it
    and leaves with ``os._exit`` (status 0 if the handler returned, 1 if it
    raised), so no ``atexit`` handler or buffered I/O of the parent runs twice.

    Args:
        max_children: at most this many children at once, enforced *before*
            forking (stdlib ``max_children``, default 40).
        block_on_close: :meth:`close` waits for every child (stdlib
            ``block_on_close``); otherwise it reaps only those already done.
        when_full: at *max_children*, ``"backpressure"`` blocks
            :meth:`dispatch` until a child exits (stdlib behaviour);
            ``"reject"`` closes the job at once.
        reject_message: sent to a rejected client before closing.
    """

    max_children: int = attrs.field(default=DEFAULT_MAX_CHILDREN, validator=attrs.validators.ge(1))
    block_on_close: bool = True
    when_full: WhenFull = attrs.field(default="backpressure", kw_only=True, validator=_check_when_full)
    reject_message: bytes = attrs.field(default=b"", kw_only=True)
    _rejected: int = attrs.field(init=False, default=0)
    # pid -> the client address its child serves, or its _Child once join()
    # made one (only then: every object made per fork costs pages).
    _children: dict[int, object] = attrs.field(init=False, factory=dict)
    _closed: bool = attrs.field(init=False, default=False)

    @property
    def active_children(self) -> set[int] | None:
        """The pids of running children, or None before the first fork
        (stdlib ``ForkingMixIn.active_children``)."""
        return set(self._children) if self._children else None

    def dispatch(self, job: Job) -> None:
        """Fork; the child runs *job*, the parent closes its copy.

        Blocks first while *max_children* children are running.

        Raises:
            ServerClosedError: after :meth:`close`.
            OSError: ``fork()`` failed (``EAGAIN``, ``ENOMEM``); the caller
                still owns the job.
        """
        if self._closed:
            raise ServerClosedError("ForkingDispatcher is closed")
        # Every page written between two forks costs a copy-on-write fault,
        # in the parent or the child, so the fork path touches little:
        # children are reaped by service() once per loop iteration (as stdlib),
        # here only when the cap is reached.
        children = self._children
        if len(children) >= self.max_children:
            self._reap(blocking=False)
            if len(children) >= self.max_children and self.when_full == "reject":
                self._rejected += 1
                job.close(self.reject_message)
                return
            while len(children) >= self.max_children:
                self._wait_any(None)
        # What a child must reset, decided here (the child then touches
        # nothing when nothing differs): it must not run the parent's
        # Python-level handlers (a "SIGTERM -> shut the server down" handler
        # would wait forever on the parent's loop): SIGTERM ends the child,
        # Ctrl-C raises as usual.
        reset = _RESETS[_getsignal(_SIGTERM) != 0][_getsignal(_SIGINT) is not _DEFAULT_INT]
        # _fork.fork() and _fork.run_child(), inline: every function run
        # between two forks writes its refcount on a page shared with the
        # other process, one copy-on-write fault each (two frames and a
        # closure less).  The std streams are flushed first, so the child
        # does not repeat what the parent wrote before.
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        # A child inherits the collector's count of young objects: once the
        # parent's is near the threshold, every child's first allocations
        # run a collection there, which walks (and writes, one fault per
        # page) objects shared with the parent, and the parent's count never
        # resets.  Collect the young generation here first, in the parent
        # (not when the program disabled the collector or its threshold).
        threshold = _gc_threshold()[0]
        if threshold and _gc_count()[0] * 2 >= threshold and _gc_enabled():
            _gc_collect(0)
        pid = os.fork()
        if pid:
            children[pid] = job.client_address
            job.close()
            return
        # The child.  Whatever happens, never return into the parent's loop:
        # status 0 if the handler returned, 1 if it raised (or anything else
        # did: printed); the std streams flushed; os._exit, so no atexit
        # handler and no buffer of the parent runs twice.
        status = 1
        try:
            for signum, handler in reset:
                _setsignal(signum, handler)
            if job.run():
                status = 0
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                for stream in (sys.stdout, sys.stderr):
                    if stream is not None:
                        stream.flush()
            finally:
                os._exit(status)

    def _reap(self, *, blocking: bool) -> None:
        children = self._children
        for pid in _fork.reap(children, blocking=blocking):
            del children[pid]

    def _wait_any(self, timeout: float | None) -> None:
        """Block until one of our children exits (or *timeout*), then reap."""
        _fork.wait_any(list(self._children), timeout)
        self._reap(blocking=False)

    def service(self) -> None:
        """Reap children that have exited (never blocks)."""
        children = self._children
        if not children:
            return
        # _fork.reap(), inline: this runs once per loop iteration, between two forks.
        for pid in list(children):
            try:
                reaped = os.waitpid(pid, os.WNOHANG)[0]
            except ChildProcessError:
                reaped = pid  # reaped elsewhere: forget it
            if reaped:
                del children[pid]

    def join(self, timeout: float | None) -> tuple[Job, ...]:
        """Wait up to *timeout* seconds for every child to exit.

        Returns:
            The jobs whose child is still running.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        self._reap(blocking=False)
        while self._children:
            remaining = _remaining(deadline)
            if remaining == 0:
                break
            self._wait_any(remaining)
        # The same _Child for a child at every call (drain tells jobs apart
        # by identity): made at the first join, then kept in place of the address.
        children = self._children
        jobs = []
        for pid, held in children.items():
            child = held if isinstance(held, _Child) else _Child(pid, held)
            children[pid] = child  # a value replaced, the size unchanged: iteration goes on
            jobs.append(child)
        return tuple(jobs)

    def close(self) -> None:
        """Refuse further jobs; wait for every child if *block_on_close*,
        else reap those already done.  Idempotent."""
        self._closed = True
        if self.block_on_close:
            self.join(None)
        else:
            self._reap(blocking=False)

    @property
    def rejected(self) -> int:
        """Jobs rejected at *max_children* so far."""
        return self._rejected

    def __repr__(self) -> str:
        rejected = f", {self._rejected} rejected" if self._rejected else ""
        state = " closed" if self._closed else ""
        return f"<ForkingDispatcher [{len(self._children)}/{self.max_children} children{rejected}]{state}>"


@final
@attrs.frozen
class PoolStatistics:
    """A snapshot of a :class:`ThreadPoolDispatcher`.

    Attributes:
        workers: worker threads alive.
        busy: workers running a job.
        idle: workers waiting for a job.
        queued: jobs accepted and waiting for a worker.
        rejected: jobs rejected because the pool was full (``when_full="reject"``).
        completed: jobs finished (normally or not).
    """

    workers: int
    busy: int
    idle: int
    queued: int
    rejected: int
    completed: int


def _check_min_workers(instance: ThreadPoolDispatcher, attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value <= instance.max_workers:
        raise ValueError(f"min_workers must be in 0..max_workers ({instance.max_workers}), got {value}")


@final
# No validating __setattr__: the counters below change several times per job,
# and attrs' on_setattr hooks cost four Python calls per assignment (the
# arguments are still validated at construction).
@attrs.define(eq=False, repr=False, on_setattr=attrs.setters.NO_OP)
class ThreadPoolDispatcher:
    """Runs jobs on a bounded pool of reused worker threads.

    Workers are started on demand up to *max_workers* and never once per job;
    those above *min_workers* exit after *idle_timeout* seconds without work.
    Jobs that find every worker busy wait in a queue of at most *queue_size*.
    When the queue is full too:

    * ``when_full="backpressure"``: :meth:`dispatch` blocks until a worker
      frees, so the serving loop stops accepting and new connections wait in
      the kernel's listen backlog;
    * ``when_full="reject"``: the job is closed at once, after
      *reject_message* is sent (best effort).

    Args:
        max_workers: the most worker threads at once.
        min_workers: workers kept alive while idle (default 0).
        queue_size: jobs that may wait for a worker.
        when_full: ``"backpressure"`` or ``"reject"``.
        reject_message: sent to a rejected client before closing.
        idle_timeout: seconds an idle worker above *min_workers* lingers.
        daemon: make the workers daemonic.
        block_on_close: :meth:`close` waits for the queue to drain and every
            worker to exit.
    """

    max_workers: int = attrs.field(default=16, validator=attrs.validators.ge(1))
    min_workers: int = attrs.field(default=0, kw_only=True, validator=_check_min_workers)
    queue_size: int = attrs.field(default=64, kw_only=True, validator=attrs.validators.ge(0))
    when_full: WhenFull = attrs.field(default="backpressure", kw_only=True, validator=_check_when_full)
    reject_message: bytes = attrs.field(default=b"", kw_only=True)
    idle_timeout: float = attrs.field(default=30.0, kw_only=True, validator=attrs.validators.gt(0))
    daemon: bool = attrs.field(default=False, kw_only=True)
    block_on_close: bool = attrs.field(default=True, kw_only=True)

    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    # Hand-off.  Jobs wait in _queue (under _lock, so join() and statistics()
    # can see them); _wakeups carries a token for a waiting worker to wake.
    # An idle worker blocks in SimpleQueue.get(), a C-level wait: no lock is
    # allocated per wait as threading.Condition does, which halves the cost
    # of handing a datagram to a worker.  One token at most is in flight
    # (close aside): a job queued while a woken worker is on its way gets
    # none, and that worker, taking a job, wakes the next one if jobs are
    # left, before it runs its own, so a burst still gets a worker per job
    # (a job never waits for a handler).  Waking every worker of a burst at
    # once only made them contend for the GIL: on 3.13 a datagram through
    # the pool cost ~6.4 futex calls and ~4.2 context switches that way,
    # 0.4 and 0.3 this way (16 UDP clients, tests/bench; 3.11: 0.9 and 0.7).
    _queue: deque[Job] = attrs.field(init=False, factory=deque)
    _wakeups: queue.SimpleQueue[None] = attrs.field(init=False, factory=queue.SimpleQueue)
    # dispatch (backpressure) waits on _room, join on _quiet; each is
    # notified only while someone waits on it.
    _room: threading.Condition = attrs.field(init=False)
    _quiet: threading.Condition = attrs.field(init=False)
    _room_waiters: int = attrs.field(init=False, default=0)
    _quiet_waiters: int = attrs.field(init=False, default=0)
    _workers: set[threading.Thread] = attrs.field(init=False, factory=set)
    _busy: dict[threading.Thread, Job] = attrs.field(init=False, factory=dict)
    _finished: list[threading.Thread] = attrs.field(init=False, factory=list)
    _idle: int = attrs.field(init=False, default=0)
    _signalled: int = attrs.field(init=False, default=0)  # tokens in _wakeups
    _starting: int = attrs.field(init=False, default=0)
    _rejected: int = attrs.field(init=False, default=0)
    _completed: int = attrs.field(init=False, default=0)
    _closed: bool = attrs.field(init=False, default=False)

    @_room.default
    def _make_room(self) -> threading.Condition:
        return threading.Condition(self._lock)

    @_quiet.default
    def _make_quiet(self) -> threading.Condition:
        return threading.Condition(self._lock)

    def __attrs_post_init__(self) -> None:
        with self._lock:
            for _ in range(self.min_workers):
                self._start_worker()

    # -- dispatch -----------------------------------------------------------

    def dispatch(self, job: Job) -> None:
        """Queue *job* for a worker, starting one if all are busy and the
        pool may grow.

        Raises:
            ServerClosedError: after :meth:`close`.
            RuntimeError: a worker thread could not be started (the caller
                still owns the job).
        """
        reject = wake = False
        with self._lock:
            if self._closed:
                raise ServerClosedError("ThreadPoolDispatcher is closed")
            if self._backlog() < 0:
                pass  # an idle (or starting) worker will take it
            elif len(self._workers) < self.max_workers:
                self._start_worker()
            elif self._backlog() >= self.queue_size:
                if self.when_full == "reject":
                    self._rejected += 1
                    reject = True
                else:
                    self._wait_for_room()
            if not reject:
                self._queue.append(job)
                # Wake a waiting worker unless one is on its way already:
                # taking its job, that one wakes the next (see _wakeups).
                wake = not self._signalled and self._idle > 0
                if wake:
                    self._signalled += 1
        if reject:
            job.close(self.reject_message)
            return
        if wake:
            self._wakeups.put(None)
        if self._finished:
            self._reap()

    def _wait_for_room(self) -> None:
        # Called with the lock held: backpressure.  The serving loop blocks
        # here, so it stops accepting until a worker frees.
        self._room_waiters += 1
        try:
            while not self._closed and self._backlog() >= self.queue_size:
                self._room.wait()
        finally:
            self._room_waiters -= 1
        if self._closed:
            raise ServerClosedError("ThreadPoolDispatcher was closed while waiting for room")

    def _backlog(self) -> int:
        """Queued jobs no free worker is about to take (negative: spare workers).

        Called with the lock held.  A worker that was started but has not
        reached its loop yet counts as free: it will take a queued job.
        """
        return len(self._queue) - self._idle - self._starting

    def _start_worker(self) -> None:
        # Called with the lock held.
        thread = threading.Thread(target=self._worker, daemon=self.daemon, name="composable_server pool worker")
        thread.start()
        self._workers.add(thread)
        self._starting += 1

    def _worker(self) -> None:
        me = threading.current_thread()
        lock, jobs, busy, get = self._lock, self._queue, self._busy, self._wakeups.get
        lock.acquire()
        self._starting -= 1
        try:
            while True:
                if not jobs:
                    if self._closed:
                        break
                    self._idle += 1
                    if self._room_waiters:
                        self._room.notify()  # an idle worker is room for one more job
                    lingering = len(self._workers) > self.min_workers
                    lock.release()
                    try:
                        get(timeout=self.idle_timeout if lingering else None)
                        woken = True
                    except queue.Empty:
                        woken = False
                    finally:
                        lock.acquire()
                        self._idle -= 1
                    if woken:
                        self._signalled -= 1
                    if not jobs and not woken and len(self._workers) > self.min_workers:
                        break  # idle too long: shrink
                    continue
                job = jobs.popleft()
                busy[me] = job
                wake_next = len(jobs) > 0 and not self._signalled and self._idle > 0
                if wake_next:
                    self._signalled += 1
                if self._room_waiters:
                    self._room.notify()
                lock.release()
                if wake_next:
                    self._wakeups.put(None)
                try:
                    job.run()
                finally:
                    lock.acquire()
                    del busy[me]
                    self._completed += 1
                    if self._quiet_waiters and not busy and not jobs:
                        self._quiet.notify_all()
        finally:
            self._workers.discard(me)
            self._finished.append(me)
            self._room.notify_all()
            self._quiet.notify_all()
            lock.release()

    def _reap(self) -> None:
        with self._lock:
            done, self._finished = self._finished, []
        for thread in done:
            thread.join()

    # -- Dispatcher protocol -------------------------------------------------

    def service(self) -> None:
        """Join workers that have exited."""
        if self._finished:
            self._reap()

    def join(self, timeout: float | None) -> tuple[Job, ...]:
        """Wait up to *timeout* seconds until no job is queued or running.

        Returns:
            The jobs still running, then those still queued.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._quiet_waiters += 1
            try:
                while self._busy or (len(self._queue) > 0 and self._workers):
                    remaining = _remaining(deadline)
                    if remaining == 0:
                        break
                    self._quiet.wait(remaining)
            finally:
                self._quiet_waiters -= 1
            return (*self._busy.values(), *self._queue)

    def close(self) -> None:
        """Refuse further jobs; workers finish the queue, then exit.  If
        *block_on_close*, wait for them.  Idempotent."""
        with self._lock:
            self._closed = True
            self._room.notify_all()
            workers = list(self._workers)
            self._signalled += len(workers)
        for _ in workers:
            self._wakeups.put(None)  # wake every idle worker: it sees _closed
        if self.block_on_close:
            for thread in workers:
                thread.join()
        self._reap()

    # -- introspection ---------------------------------------------------------

    def statistics(self) -> PoolStatistics:
        """A consistent snapshot of the pool's counters."""
        with self._lock:
            return PoolStatistics(
                workers=len(self._workers),
                busy=len(self._busy),
                idle=self._idle,
                queued=len(self._queue),
                rejected=self._rejected,
                completed=self._completed,
            )

    def __repr__(self) -> str:
        st = self.statistics()
        state = " closed" if self._closed else ""
        return (
            f"<ThreadPoolDispatcher [workers: {st.busy} busy, {st.idle} idle of {self.max_workers} | "
            f"queued: {st.queued}/{self.queue_size} | rejected: {st.rejected}]{state}>"
        )
