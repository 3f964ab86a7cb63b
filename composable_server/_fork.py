"""Fork plumbing shared by the forking dispatcher and the prefork supervisor.

* :func:`fork` - flush ``sys.stdout``/``sys.stderr`` first, so the child does
  not inherit (and, when it flushes, repeat) what the parent wrote before;
* :func:`run_child` - run the child's work and leave with ``os._exit``: the
  child never returns into the parent's code and never runs the parent's
  ``atexit`` handlers; an exception is printed, and the status is 1;
* :func:`reap` / :func:`wait_any` - reap and wait for *our own* children, by
  pid: never ``waitpid(-1)``, which would steal the exit status of children
  that other code in the process started (``subprocess``, another server);
* :func:`open_pidfd` - a descriptor that becomes readable when a child exits
  (``pidfd_open(2)``, Linux >= 5.3), or -1 where there is none.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import NoReturn

__all__ = ("fork", "kill", "open_pidfd", "reap", "run_child", "wait_any")


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()


def fork() -> int:
    """``os.fork()`` after flushing the std streams; the child's pid, or 0 in the child.

    Raises:
        OSError: ``fork(2)`` failed (``EAGAIN``, ``ENOMEM``).
    """
    _flush_std_streams()
    return os.fork()


def run_child(body: Callable[[], int]) -> NoReturn:
    """In a freshly forked child: run *body*, then ``os._exit`` with its status.

    An exception from *body* (any, ``KeyboardInterrupt`` and ``SystemExit``
    included) is printed to stderr and gives status 1.  The std streams are
    flushed before the exit, whatever happened.
    """
    status = 1
    try:
        status = body()
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            _flush_std_streams()
        finally:
            os._exit(status)


def reap(pids: Iterable[int], *, blocking: bool = False) -> list[int]:
    """Reap those of *pids* (our children) that have exited; return them.

    A pid that is no longer our child (``ECHILD``: reaped elsewhere) counts
    as exited, so the caller forgets it.  With *blocking*, wait for each.
    """
    done = []
    for pid in pids:
        try:
            reaped, _ = os.waitpid(pid, 0 if blocking else os.WNOHANG)
        except ChildProcessError:
            reaped = pid
        if reaped:
            done.append(pid)
    return done


def open_pidfd(pid: int) -> int:
    """A pidfd for *pid* (close it when done), or -1 where the system has none."""
    try:
        return os.pidfd_open(pid)
    except (OSError, AttributeError):
        return -1


def wait_any(pids: Sequence[int], timeout: float | None) -> None:
    """Block until one of *pids* (our children) exits, or *timeout* seconds pass.

    Reaps nothing, except without pidfds (Linux < 5.3, other systems): then
    it waits for, and reaps, the first of *pids* (whatever *timeout* says);
    a later :func:`reap` reports it as exited all the same.
    """
    if not pids:
        return
    fds = []
    try:
        for pid in pids:
            fd = open_pidfd(pid)
            if fd < 0:
                # No pidfds here: wait for the oldest child.
                reap(pids[:1], blocking=True)
                return
            fds.append(fd)
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        poller.poll(None if timeout is None else timeout * 1000)
    finally:
        for fd in fds:
            os.close(fd)


def kill(pid: int, signum: int = signal.SIGTERM) -> None:
    """Send *signum* to *pid*; nothing if it has already gone."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
