"""Dispatchers: where a job runs, and how many run at once.

* :class:`SyncDispatcher` - in the serving thread, one at a time (stdlib
  ``TCPServer``);
* :class:`ThreadingDispatcher` - a thread per job (stdlib ``ThreadingMixIn``),
  finished threads reaped as it goes, so its bookkeeping never grows;
* :class:`ForkingDispatcher` - a child process per job (stdlib
  ``ForkingMixIn``), at most *max_children* at once, children reaped without
  zombies, and only its own children: it never calls ``waitpid(-1)``, which
  would steal other children's exit statuses.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
from typing import Final, final

import attrs

from .exceptions import ServerClosedError
from .interfaces import Job

__all__ = ("ForkingDispatcher", "SyncDispatcher", "ThreadingDispatcher")

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
    """

    daemon: bool = False
    block_on_close: bool = True
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    _active: dict[threading.Thread, Job] = attrs.field(init=False, factory=dict)
    # Threads whose job ended but which may not have exited yet; joined (at
    # once, in practice) by the next dispatch, so the bookkeeping stays at the
    # number of running jobs (stdlib bpo-37193 leaked one Thread per request).
    _finished: list[threading.Thread] = attrs.field(init=False, factory=list)
    _closed: bool = attrs.field(init=False, default=False)

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

    def _reap(self) -> None:
        if self._finished:
            with self._lock:
                done, self._finished = self._finished, []
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
        self._closed = True
        if self.block_on_close and not self.daemon:
            self.join(None)
        else:
            self._reap()

    def statistics(self) -> int:
        """The number of jobs running now."""
        with self._lock:
            return len(self._active)

    def __repr__(self) -> str:
        flags = "daemon" if self.daemon else "non-daemon"
        state = " closed" if self._closed else ""
        return f"<ThreadingDispatcher [{self.statistics()} running, {flags}]{state}>"


@final
class _Child:
    """The parent's handle on a job running in a child process."""

    __slots__ = ("client_address", "pid")

    def __init__(self, pid: int, client_address: object) -> None:
        self.pid = pid
        self.client_address = client_address

    def run(self) -> bool:
        raise RuntimeError("a job running in a child process cannot be run again")

    def close(self) -> None:
        """Nothing: the parent's copy of the request was closed at fork time."""

    def abort(self) -> None:
        """Ask the child to stop (SIGTERM; children run with the default action)."""
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def __repr__(self) -> str:
        return f"<child {self.pid} serving {self.client_address!r}>"


def _reset_signals_in_child() -> None:
    # A child must not run the parent's Python-level handlers (e.g. a
    # "SIGTERM -> shutdown the server" handler would wait forever on the
    # parent's serving loop).  SIGTERM ends the child; Ctrl-C raises as usual.
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # not the main thread: cannot happen after fork
        pass


@final
@attrs.define(eq=False)
class ForkingDispatcher:
    """Runs each job in a forked child process.

    The parent closes its copy of the request at once; the child serves it
    and leaves with ``os._exit`` (status 0 if the handler returned, 1 if it
    raised), so no ``atexit`` handler or buffered I/O of the parent runs twice.

    Args:
        max_children: at most this many children at once; :meth:`dispatch`
            blocks until one exits (stdlib ``max_children``, default 40).
        block_on_close: :meth:`close` waits for every child (stdlib
            ``block_on_close``); otherwise it reaps only those already done.
    """

    max_children: int = attrs.field(default=DEFAULT_MAX_CHILDREN, validator=attrs.validators.ge(1))
    block_on_close: bool = True
    # pid -> the parent's handle on the child's job.
    _children: dict[int, _Child] = attrs.field(init=False, factory=dict)
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
        self._reap(blocking=False)
        while len(self._children) >= self.max_children:
            self._wait_any(None)
        # Flush our own buffers so the child does not inherit (and, if it
        # flushes, repeat) output the parent wrote before the fork.
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        pid = os.fork()
        if pid:
            self._children[pid] = _Child(pid, job.client_address)
            job.close()
            return
        # Child.  Whatever happens, never return into the parent's loop.
        status = 1
        try:
            _reset_signals_in_child()
            status = 0 if job.run() else 1
        finally:
            try:
                for stream in (sys.stdout, sys.stderr):
                    if stream is not None:
                        stream.flush()
            finally:
                os._exit(status)

    def _reap(self, *, blocking: bool) -> None:
        for pid in list(self._children):
            try:
                done, _ = os.waitpid(pid, 0 if blocking else os.WNOHANG)
            except ChildProcessError:
                done = pid  # already reaped elsewhere: forget it
            if done:
                del self._children[pid]

    def _wait_any(self, timeout: float | None) -> None:
        """Block until one of our children exits (or *timeout*), then reap."""
        pids = list(self._children)
        if not pids:
            return
        try:
            fds = [os.pidfd_open(pid) for pid in pids]
        except (OSError, AttributeError):
            # No pidfd (Linux < 5.3, other systems): wait for the oldest child.
            self._reap_one_blocking(pids[0])
            return
        try:
            poller = select.poll()
            for fd in fds:
                poller.register(fd, select.POLLIN)
            poller.poll(None if timeout is None else timeout * 1000)
        finally:
            for fd in fds:
                os.close(fd)
        self._reap(blocking=False)

    def _reap_one_blocking(self, pid: int) -> None:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        self._children.pop(pid, None)

    def service(self) -> None:
        """Reap children that have exited (never blocks)."""
        if self._children:
            self._reap(blocking=False)

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
        return tuple(self._children.values())

    def close(self) -> None:
        """Refuse further jobs; wait for every child if *block_on_close*,
        else reap those already done.  Idempotent."""
        self._closed = True
        if self.block_on_close:
            self.join(None)
        else:
            self._reap(blocking=False)

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<ForkingDispatcher [{len(self._children)}/{self.max_children} children]{state}>"
