"""Prefork: N worker processes serving one listening socket, supervised.

Theory of operation
-------------------

The parent binds the transport once (:meth:`Prefork.bind`) and forks
*workers* children.  Each worker calls ``make_server(transport)``, a factory
that builds a fresh :class:`~composable_server.server.Server` around the
inherited, already listening transport (``bind_and_activate=False``), with its
own dispatcher (typically a :class:`~composable_server.dispatchers.ThreadPoolDispatcher`),
wake-up pipe and watchdog, and runs its ``serve_forever`` in a thread.  The
kernel hands each pending connection to one of the workers polling the shared
socket.  Nothing is shared between workers but the listening descriptor: a
handler that crashes its process takes down one worker, not the service.

The parent serves nothing.  It polls one pidfd per worker (``pidfd_open(2)``,
Linux >= 5.3; elsewhere a 100 ms ``waitpid(WNOHANG)`` sweep) and a
self-pipe that :meth:`Prefork.stop` writes to:

* a worker exits while the supervisor runs: it is reaped and replaced, unless
  more than *max_restarts* replacements happened within *restart_window*
  seconds, in which case the supervisor stops every worker and
  :meth:`Prefork.serve_forever` raises :class:`RestartLimitError` (a crash
  loop must not become a fork bomb).  Only failures count: a worker that
  exits 0 after a drain (recycled by a :class:`RecyclingDispatcher`, or
  stopped by hand) is replaced outside the budget;
* :meth:`Prefork.reload` (or SIGHUP): a rolling restart.  A fresh worker is
  forked for each one running, then the old ones are sent SIGTERM and drain
  (those requests in flight finish; nothing queued is lost, since every
  generation polls the same listening socket and a connection waits in its
  queue until some worker accepts it).  Retiring workers are not replaced
  when they exit;
* :meth:`Prefork.add_worker` / :meth:`Prefork.remove_worker` (or
  SIGTTIN/SIGTTOU): one worker more, or one fewer (never below one; the
  removed one drains);
* :meth:`Prefork.reexec` (or SIGUSR2), with *reexec_argv*: run the program
  again (new code), handing the listening socket over as fd 3 with
  ``LISTEN_FDS=1``, ``LISTEN_PID`` and ``LISTEN_FDNAMES=`` :data:`HANDOVER_FDNAME`
  (socket activation by ourselves), and a pipe in :data:`READY_FD_VARIABLE`.
  The new supervisor writes to that pipe once its workers are forked; the
  old one then tells systemd ``MAINPID=`` (and ``READY=1``), stops its
  workers (they drain) and returns.  A new generation that exits, or is not
  ready within *handover_timeout* seconds, is reaped (killed first if need
  be) and the old one keeps serving;
* :meth:`Prefork.stop` (or SIGTERM/SIGINT to the parent, when
  ``serve_forever`` runs in the main thread): every worker is sent SIGTERM;
  each drains (stops accepting, lets requests in flight finish for up to
  *drain_timeout* seconds, cuts the rest) and exits; the parent waits up to
  *stop_timeout* seconds, then SIGKILLs what is left, and reaps every child,
  so no zombie and no orphan remains when ``serve_forever`` returns.

Worker side: the forking thread blocks SIGTERM/SIGINT, starts the serving
thread (which inherits the mask, as do the handler threads) and waits in
``sigtimedwait``.  A stop reaches it as a SIGTERM, from the supervisor, or
from the kernel when the supervisor dies, even SIGKILLed
(``prctl(PR_SET_PDEATHSIG)`` on Linux); it also checks every 0.1 s that its
parent is still the supervisor (elsewhere, and in case the supervisor died
before the worker could ask for that signal).

A stopping worker is gone within *drain_timeout* + 1 s of the stop, whatever
its handlers do: it drains (:meth:`Server.drain`, at most *drain_timeout* +
0.5 s), joins the serving thread with what is left of that budget, and a
timer armed when the stop arrived (``setitimer(ITIMER_REAL)``, SIGALRM at its
default action) has the kernel end the process at the deadline if anything
still holds it up: a handler stuck in ``sleep`` or on a lock the exit path
needs.  That backstop depends on no thread of the worker, nor on the GIL.

A worker leaves with ``os._exit``: it never returns into the parent's code,
never runs its ``atexit`` handlers, and never closes the transport (which,
for a Unix socket, would unlink the file the other workers still serve).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import random
import select
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from types import FrameType, TracebackType
from typing import Final, Generic, Self, TypeAlias, TypeVar, final

import attrs

from ._socketutil import Waker
from . import _fork
from .exceptions import RestartLimitError as RestartLimitError
from .exceptions import ServerClosedError, ServerStateError
from .interfaces import Dispatcher, Job, Observer, Transport, WorkerExited, WorkerStarted
from .observers import ObserverGroup
from .server import Server
from .systemd import Notifier, WatchdogHeartbeat

_logger = logging.getLogger("composable_server.prefork")

__all__ = (
    "DEFAULT_WORKERS",
    "HANDOVER_FDNAME",
    "READY_FD_VARIABLE",
    "Prefork",
    "PreforkStatistics",
    "RecyclingDispatcher",
    "RestartLimitError",
)

RequestT = TypeVar("RequestT")
AddressT = TypeVar("AddressT")

DEFAULT_WORKERS: Final = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
"""One worker per CPU this process may run on."""

# What signal.signal() returns and accepts.
_Handler: TypeAlias = Callable[[int, FrameType | None], object] | int | None

# Signals that ask the supervisor (and each worker) to stop gracefully.
_STOP_SIGNALS: Final = frozenset({signal.SIGTERM, signal.SIGINT})
# Signals the supervisor alone acts on: a rolling restart, one worker more or
# fewer, a re-exec.
_CONTROL_SIGNALS: Final = frozenset({signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR2})

HANDOVER_FDNAME: Final = "composable-server-handover"
"""``LISTEN_FDNAMES`` of the socket a re-executing supervisor hands over."""

READY_FD_VARIABLE: Final = "COMPOSABLE_SERVER_READY_FD"
"""The variable naming the pipe a re-executed supervisor reports "ready" on."""
# How often a worker checks that its parent is still the supervisor.
_PARENT_CHECK: Final = 0.1
# A stopping worker's budget beyond drain_timeout: the drain's grace for the
# requests it cut, and the deadline of the backstop timer that ends the
# worker if its exit is held up (both counted from the stop).
_DRAIN_GRACE: Final = 0.5
_EXIT_MARGIN: Final = 0.9
# prctl(2) option: the signal a process gets when its parent thread exits.
_PR_SET_PDEATHSIG: Final = 1
# Without pidfds, how often the supervisor sweeps its children.
_SWEEP_INTERVAL: Final = 0.1


@final
@attrs.frozen
class PreforkStatistics:
    """A snapshot of a :class:`Prefork` supervisor.

    Attributes:
        workers: worker processes alive.
        started: workers forked so far (initial ones and replacements).
        restarts: workers replaced after they exited on their own.
        pids: the pids of the live workers.
        recycled: of the *restarts*, the workers that exited cleanly (status 0:
            recycled by a ``RecyclingDispatcher``, or stopped by hand), which
            do not count against the restart budget.
    """

    workers: int
    started: int
    restarts: int
    pids: tuple[int, ...]
    recycled: int = 0


def _observer_group(observers: Iterable[Observer] | None) -> ObserverGroup | None:
    """Prefork's ``observers`` converter: None when there are none."""
    return ObserverGroup.of(observers)


def _check_workers(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"workers must be >= 1, got {value}")


@final
@attrs.define(eq=False, repr=False)
class Prefork(Generic[RequestT, AddressT]):
    """A supervisor of *workers* processes serving one shared listening socket.

    Example::

        prefork = Prefork(
            TCPTransport(("0.0.0.0", 8000)),
            lambda transport: Server(
                transport=transport,
                acceptor=StreamAcceptor(),
                handler=MyHandler,
                dispatcher=ThreadPoolDispatcher(16),
                bind_and_activate=False,
            ),
            workers=4,
        )
        with prefork:
            prefork.serve_forever()  # until stop(), SIGTERM or Ctrl-C

    Args:
        transport: the listening socket; bound and activated by the parent
            (at construction if *bind_and_activate*), inherited by every worker.
        make_server: called in each worker with *transport*; returns the
            worker's server, built with ``bind_and_activate=False`` and its own
            dispatcher.
        workers: how many worker processes (default: one per CPU).
        max_restarts: at most this many replacements of exited workers ...
        restart_window: ... within this many seconds; beyond it, the
            supervisor stops and raises :class:`RestartLimitError`.
        drain_timeout: seconds a stopping worker lets its requests in flight
            finish before cutting them (:meth:`Server.drain`); whatever its
            handlers do, it is gone within *drain_timeout* + 1 s of the stop
            (or of the supervisor's death).
        stop_timeout: seconds the supervisor waits for stopping workers
            before it SIGKILLs them.
        poll_interval: each worker's ``serve_forever(poll_interval)``.
        bind_and_activate: bind and listen now.
        notifier: tell systemd (sd_notify) ``READY=1`` once the workers are
            forked, ``STOPPING=1`` when a stop begins, ``RELOADING=1`` and
            ``READY=1`` around a reload, ``MAINPID=`` after a re-exec, and
            ``WATCHDOG=1`` from the supervisor's loop while it turns (when
            systemd asks for it).
        reexec_argv: the command that runs this program again for
            :meth:`reexec` (e.g. ``[sys.executable, *sys.orig_argv[1:]]``);
            None: SIGUSR2 is ignored (logged).
        handover_timeout: seconds a re-executed generation has to report ready.
        observers: told of each worker started (``replacing``: the exited
            one it replaces) and each worker reaped, in the supervisor
            (:class:`~composable_server.interfaces.Observer`).

    Raises:
        BindError: the address could not be bound.
    """

    transport: Transport[RequestT, AddressT]
    make_server: Callable[[Transport[RequestT, AddressT]], Server[RequestT, AddressT]]
    workers: int = attrs.field(default=DEFAULT_WORKERS, validator=_check_workers)
    max_restarts: int = attrs.field(default=10, kw_only=True, validator=attrs.validators.ge(0))
    restart_window: float = attrs.field(default=60.0, kw_only=True, validator=attrs.validators.gt(0))
    drain_timeout: float = attrs.field(default=5.0, kw_only=True, validator=attrs.validators.ge(0))
    stop_timeout: float = attrs.field(default=10.0, kw_only=True, validator=attrs.validators.ge(0))
    poll_interval: float = attrs.field(default=0.5, kw_only=True, validator=attrs.validators.gt(0))
    bind_and_activate: bool = attrs.field(default=True, kw_only=True)
    notifier: Notifier | None = attrs.field(default=None, kw_only=True)
    reexec_argv: tuple[str, ...] | None = attrs.field(default=None, kw_only=True)
    handover_timeout: float = attrs.field(default=30.0, kw_only=True, validator=attrs.validators.gt(0))
    observers: ObserverGroup | None = attrs.field(default=None, kw_only=True, converter=_observer_group)

    _waker: Waker = attrs.field(init=False, factory=Waker)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    _pids: dict[int, int] = attrs.field(init=False, factory=dict)  # pid -> pidfd (-1: none)
    _restart_times: deque[float] = attrs.field(init=False, factory=deque)
    _started: int = attrs.field(init=False, default=0)
    _restarts: int = attrs.field(init=False, default=0)
    _running: bool = attrs.field(init=False, default=False)
    _stop_requested: bool = attrs.field(init=False, default=False)
    # Set from signal handlers and other threads, acted on by the supervisor loop.
    _reload_requested: bool = attrs.field(init=False, default=False)
    _resize_requested: int = attrs.field(init=False, default=0)
    # Workers told to drain and exit (reload, remove_worker): not replaced.
    _retiring: set[int] = attrs.field(init=False, factory=set)
    _supervisor_pid: int = attrs.field(init=False, factory=os.getpid)
    _reexec_requested: bool = attrs.field(init=False, default=False)
    # The re-executed generation being started: (pid, read end of its ready pipe, deadline).
    _successor: tuple[int, int, float] | None = attrs.field(init=False, default=None)
    _handed_over: bool = attrs.field(init=False, default=False)
    _statuses: dict[int, int] = attrs.field(init=False, factory=dict)  # pid -> wait status, until handled
    _recycled: int = attrs.field(init=False, default=0)
    _stopped: threading.Event = attrs.field(init=False, factory=threading.Event)
    _bound: bool = attrs.field(init=False, default=False)
    _closed: bool = attrs.field(init=False, default=False)

    def __attrs_post_init__(self) -> None:
        self._stopped.set()
        if self.bind_and_activate:
            try:
                self.bind()
            except BaseException:
                self.close()
                raise

    # -- lifecycle -------------------------------------------------------------

    def bind(self) -> None:
        """Bind the transport and listen.  Idempotent.

        Raises:
            BindError: the address could not be bound.
            ServerClosedError: after :meth:`close`.
        """
        if self._closed:
            raise ServerClosedError("Prefork is closed")
        if not self._bound:
            self.transport.bind()
            self.transport.activate()
            self._bound = True

    @property
    def server_address(self) -> AddressT:
        """The bound address (port 0 resolved)."""
        return self.transport.server_address

    def serve_forever(self) -> None:
        """Fork the workers and supervise them until :meth:`stop`.

        In the main thread, SIGTERM and SIGINT also stop it (the previous
        handlers are restored on return).  On return every worker has exited
        and been reaped.

        Raises:
            RestartLimitError: workers exited faster than the restart budget.
            ServerClosedError: after :meth:`close`.
            ServerStateError: already running.
        """
        with self._lock:
            if self._closed:
                raise ServerClosedError("serve_forever() called on a closed Prefork")
            if self._running:
                raise ServerStateError("Prefork.serve_forever() is already running")
            if self._stop_requested:  # stop() before the start: return at once
                self._stop_requested = False
                return
            self._running = True
            self._stopped.clear()
        self.bind()
        previous = self._install_signal_handlers()
        try:
            for _ in range(self.workers):
                self._spawn()
            if self.notifier is not None:
                self.notifier.ready(f"{self.workers} workers serving {self.server_address!r}")
            self._supervise()
        finally:
            try:
                if self.notifier is not None and not self._handed_over:
                    # Here, not in stop(): that may run in a signal handler,
                    # which must not wait for the notifier's lock.
                    self.notifier.stopping(f"stopping {len(self.pids)} workers")
                self._stop_workers()
            finally:
                self._restore_signal_handlers(previous)
                self._waker.drain()
                with self._lock:
                    self._running = False
                    self._stop_requested = False
                    self._stopped.set()

    def stop(self) -> None:
        """Ask :meth:`serve_forever` to stop every worker gracefully and return.

        Safe from any thread and from a signal handler; does not wait (see
        :meth:`wait`).  Called before ``serve_forever``, that call returns at once.
        """
        self._stop_requested = True
        self._waker.wake()

    def reload(self) -> None:
        """Ask :meth:`serve_forever` for a rolling restart: new workers first,
        then the old ones drain and exit.  Safe from any thread and from a
        signal handler (SIGHUP); does not wait."""
        self._reload_requested = True
        self._waker.wake()

    def reexec(self) -> None:
        """Ask :meth:`serve_forever` to run the program again (*reexec_argv*)
        on the same listening socket, and to hand over once the new
        generation is ready (SIGUSR2).  Safe from any thread and from a
        signal handler; does not wait."""
        self._reexec_requested = True
        self._waker.wake()

    @property
    def handed_over(self) -> bool:
        """True once a re-executed generation took over (serve_forever then returns)."""
        return self._handed_over

    def add_worker(self) -> None:
        """Ask for one worker more (SIGTTIN).  Safe from any thread and from a signal handler."""
        self._resize_requested += 1
        self._waker.wake()

    def remove_worker(self) -> None:
        """Ask for one worker fewer, never below one (SIGTTOU); it drains before
        it exits.  Safe from any thread and from a signal handler."""
        self._resize_requested -= 1
        self._waker.wake()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until :meth:`serve_forever` is not running; True if so."""
        return self._stopped.wait(timeout)

    def close(self) -> None:
        """Stop (and wait for) a running supervisor, then close the transport.  Idempotent."""
        with self._lock:
            running = self._running
            self._closed = True
        if running:
            self.stop()
            self._stopped.wait()
        self.transport.close()
        self._waker.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- introspection -----------------------------------------------------------

    @property
    def pids(self) -> tuple[int, ...]:
        """The pids of the live workers."""
        with self._lock:
            return tuple(self._pids)

    def statistics(self) -> PreforkStatistics:
        """A consistent snapshot of the supervisor's counters."""
        with self._lock:
            return PreforkStatistics(
                workers=len(self._pids),
                started=self._started,
                restarts=self._restarts,
                pids=tuple(self._pids),
                recycled=self._recycled,
            )

    def __repr__(self) -> str:
        st = self.statistics()
        state = "closed" if self._closed else "running" if self._running else "idle"
        return (
            f"<Prefork {self.server_address!r} [workers: {st.workers}/{self.workers} alive | "
            f"started: {st.started} | restarts: {st.restarts}] {state}>"
        )

    # -- the supervisor -------------------------------------------------------------

    def _supervise(self) -> None:
        waker_fd = self._waker.fileno()
        # The watchdog pings from this loop, so they stop if it wedges.
        heartbeat: WatchdogHeartbeat | None = None if self.notifier is None else self.notifier.heartbeat()
        while not self._stop_requested:
            poller = select.poll()
            poller.register(waker_fd, select.POLLIN)
            sweep = False
            with self._lock:
                for pidfd in self._pids.values():
                    if pidfd >= 0:
                        poller.register(pidfd, select.POLLIN)
                    else:
                        sweep = True
            timeout = _SWEEP_INTERVAL if sweep else None
            if self._successor is not None:
                poller.register(self._successor[1], select.POLLIN)
                until = max(0.0, self._successor[2] - time.monotonic())
                timeout = until if timeout is None else min(timeout, until)
            if heartbeat is not None:
                heartbeat.beat()
                timeout = heartbeat.interval / 2 if timeout is None else min(timeout, heartbeat.interval / 2)
            poller.poll(None if timeout is None else timeout * 1000.0)
            self._waker.drain()
            if self._stopping():
                return
            for pid in self._reap():
                status = self._statuses.pop(pid, -1)
                if pid in self._retiring:
                    self._retiring.discard(pid)
                elif len(self._serving()) >= self.workers:
                    pass
                elif status == 0:
                    # A clean exit after a drain: the worker was recycled
                    # (RecyclingDispatcher) or stopped by hand, not a crash,
                    # so it does not count against the restart budget.
                    self._restarts += 1
                    self._recycled += 1
                    self._spawn()
                else:
                    self._replace(pid)
            self._control()
            if self._successor is not None and self._successor_ready():
                return

    def _start_successor(self) -> None:
        """Fork and exec *reexec_argv* with the listening socket as fd 3 (see :meth:`reexec`)."""
        argv = self.reexec_argv
        if not argv:
            _logger.warning("SIGUSR2: no re-exec command (reexec_argv) configured: ignored")
            return
        if self._successor is not None:
            _logger.warning("SIGUSR2: a new generation is already starting: ignored")
            return
        read_fd, write_fd = os.pipe()
        env = dict(os.environ, LISTEN_FDS="1", LISTEN_FDNAMES=HANDOVER_FDNAME)
        env[READY_FD_VARIABLE] = "4"
        # Above every descriptor the child's dup2()s could overwrite.
        listen_fd = fcntl.fcntl(self.transport.fileno(), fcntl.F_DUPFD_CLOEXEC, 10)
        ready_fd = fcntl.fcntl(write_fd, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(write_fd)
        try:
            pid = _fork.fork()
            if pid == 0:  # pragma: no cover  (replaced by exec)
                try:
                    os.dup2(listen_fd, 3)  # dup2 clears close-on-exec: inherited
                    os.dup2(ready_fd, 4)
                    env["LISTEN_PID"] = str(os.getpid())
                    if "WATCHDOG_USEC" in env:
                        env["WATCHDOG_PID"] = env["LISTEN_PID"]  # the watchdog is the new generation's now
                    os.execve(argv[0], argv, env)
                finally:
                    os._exit(127)
        finally:
            os.close(listen_fd)
            os.close(ready_fd)
        _logger.info("SIGUSR2: started a new generation, pid %d: %s", pid, " ".join(argv))
        self._successor = (pid, read_fd, time.monotonic() + self.handover_timeout)

    def _successor_ready(self) -> bool:
        """Check on the new generation; True once it is ready (we hand over)."""
        assert self._successor is not None
        pid, read_fd, deadline = self._successor
        if select.select([read_fd], [], [], 0)[0]:
            if os.read(read_fd, 64):
                os.close(read_fd)
                self._successor = None
                self._handed_over = True
                _logger.info("new generation %d is ready: handing over, stopping this one", pid)
                if self.notifier is not None:
                    self.notifier.notify(f"MAINPID={pid}", "READY=1")
                return True
            reason = "exited before it was ready"
        elif time.monotonic() >= deadline:
            reason = f"was not ready within {self.handover_timeout:g} s; killed"
            _fork.kill(pid, signal.SIGKILL)
        else:
            return False
        os.close(read_fd)
        self._successor = None
        _, status = os.waitpid(pid, 0)
        _logger.error("new generation %d %s (wait status %d): this one keeps serving", pid, reason, status)
        return False

    def _serving(self) -> list[int]:
        """The live workers that are not retiring."""
        with self._lock:
            return [pid for pid in self._pids if pid not in self._retiring]

    def _control(self) -> None:
        """Act on reload(), add_worker(), remove_worker() and reexec() requests."""
        if self._reexec_requested:
            self._reexec_requested = False
            self._start_successor()
        resize, self._resize_requested = self._resize_requested, 0
        if resize:
            self.workers = max(1, self.workers + resize)
            serving = self._serving()
            for _ in range(self.workers - len(serving)):
                self._spawn()
            for pid in serving[: max(0, len(serving) - self.workers)]:
                self._retire(pid)
            _logger.info("now %d workers", self.workers)
            if self.notifier is not None:
                self.notifier.status(f"{self.workers} workers serving {self.server_address!r}")
        if self._reload_requested:
            self._reload_requested = False
            old = self._serving()
            _logger.info("reload: starting %d new workers, then retiring %d", self.workers, len(old))
            if self.notifier is not None:
                self.notifier.reloading(f"reloading: replacing {len(old)} workers")
            for _ in range(self.workers):
                self._spawn()
            for pid in old:
                self._retire(pid)
            if self.notifier is not None:
                self.notifier.ready(f"{self.workers} workers serving {self.server_address!r}")

    def _retire(self, pid: int) -> None:
        """Tell one worker to drain and exit, and not to be replaced."""
        self._retiring.add(pid)
        _fork.kill(pid, signal.SIGTERM)

    def _stopping(self) -> bool:
        # A method, not the attribute: another thread (or a signal handler)
        # sets the flag while this one waits.
        return self._stop_requested

    def _replace(self, pid: int) -> None:
        now = time.monotonic()
        times = self._restart_times
        while times and now - times[0] > self.restart_window:
            times.popleft()
        if len(times) >= self.max_restarts:
            raise RestartLimitError(
                f"worker {pid} exited; {len(times)} workers were already replaced in the last "
                f"{self.restart_window:g} s (max_restarts={self.max_restarts}): not replacing it"
            )
        times.append(now)
        self._restarts += 1
        self._spawn(replacing=pid)

    def _reap(self, *, blocking: bool = False) -> list[int]:
        """Reap exited workers; return their pids."""
        done = []
        with self._lock:
            for pid in list(self._pids):
                try:
                    reaped, status = os.waitpid(pid, 0 if blocking else os.WNOHANG)
                except ChildProcessError:
                    reaped, status = pid, -1  # reaped by someone else: forget it
                if reaped:
                    self._statuses[pid] = status
                    pidfd = self._pids.pop(pid)
                    if pidfd >= 0:
                        os.close(pidfd)
                    done.append(pid)
        if self.observers is not None:
            for pid in done:
                status = self._statuses.get(pid, -1)
                code = os.waitstatus_to_exitcode(status) if status >= 0 else -1
                self.observers.worker_exited(WorkerExited(pid, code))
        return done

    def _stop_workers(self) -> None:
        """SIGTERM every worker, wait up to stop_timeout, SIGKILL the rest, reap all."""
        if not self._handed_over:  # the whole instance stops: no connection joins the backlog any more
            _refuse_new_connections(self.transport)
        for pid in self.pids:
            _fork.kill(pid, signal.SIGTERM)
        # Drop our copy of the listening descriptor (not the transport: a Unix
        # path stays for close(), or for a successor): the last worker to
        # close its own, after taking the backlog, makes new connects refused.
        _close_descriptor(self.transport)
        deadline = time.monotonic() + self.stop_timeout
        while self.pids and time.monotonic() < deadline:
            self._reap()
            if self.pids:
                time.sleep(0.01)
        for pid in self.pids:
            _fork.kill(pid, signal.SIGKILL)
        self._reap(blocking=True)

    def _spawn(self, replacing: int | None = None) -> None:
        # Fork with the stop signals blocked: a SIGTERM sent to a worker
        # before it has installed its own handling must stay pending for its
        # sigtimedwait, not run the parent's inherited Python handler (which
        # would swallow it, leaving the worker deaf until SIGKILL).  The
        # parent's own pending signals arrive when its mask is restored.
        previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        supervisor = os.getpid()
        try:
            pid = _fork.fork()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
            raise
        if pid == 0:
            # Never returns; its signals stay blocked.
            _fork.run_child(lambda: self._worker_main(supervisor))
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        pidfd = _fork.open_pidfd(pid)
        with self._lock:
            self._pids[pid] = pidfd
            self._started += 1
        if self.observers is not None:
            self.observers.worker_started(WorkerStarted(pid, replacing))

    def _install_signal_handlers(self) -> dict[signal.Signals, _Handler] | None:
        if threading.current_thread() is not threading.main_thread():
            return None
        previous: dict[signal.Signals, _Handler] = {}

        def on_signal(signum: int, frame: FrameType | None) -> None:
            _logger.info(
                "%s: stopping; each worker lets its requests in flight finish for up to %g s",
                signal.Signals(signum).name,
                self.drain_timeout,
            )
            self.stop()

        def on_control(signum: int, frame: FrameType | None) -> None:
            if os.getpid() != self._supervisor_pid:
                return  # inherited by a worker: the supervisor's business only
            _logger.debug("%s received", signal.Signals(signum).name)
            if signum == signal.SIGHUP:
                self.reload()
            elif signum == signal.SIGUSR2:
                self.reexec()
            elif signum == signal.SIGTTIN:
                self.add_worker()
            else:
                self.remove_worker()

        for signum in _STOP_SIGNALS:
            previous[signum] = signal.signal(signum, on_signal)
        for signum in _CONTROL_SIGNALS:
            previous[signum] = signal.signal(signum, on_control)
        return previous

    def _restore_signal_handlers(self, previous: dict[signal.Signals, _Handler] | None) -> None:
        if previous is None:
            return
        for signum, handler in previous.items():
            if handler is not None:  # None: installed outside Python, cannot be restored
                signal.signal(signum, handler)

    # -- the worker -----------------------------------------------------------------

    def _worker_main(self, supervisor: int) -> int:
        """Run in a freshly forked worker of *supervisor* (a pid), under
        ``_fork.run_child``; return its exit status."""
        # The supervisor's state is the parent's business.
        self._waker.close()
        for pidfd in self._pids.values():
            if pidfd >= 0:
                os.close(pidfd)
        self._pids.clear()
        # SIGALRM too: the backstop timer's default action ends the
        # process (the parent's handler, e.g. pytest-timeout's, must not run).
        for signum in (*_STOP_SIGNALS, signal.SIGALRM):
            signal.signal(signum, signal.SIG_DFL)
        # Block the stop signals before any thread starts, so that they
        # all inherit the mask and only sigtimedwait below sees them.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        server = self.make_server(self.transport)
        # After make_server(): a change of credentials there would clear it.
        _die_with_parent(signal.SIGTERM)
        # The supervisor may have died before that: then nobody will signal.
        orphaned = os.getppid() != supervisor
        failed: list[BaseException] = []

        def serve() -> None:
            try:
                server.serve_forever(self.poll_interval)
            except BaseException as exc:
                failed.append(exc)
                traceback.print_exc()
                os.kill(os.getpid(), signal.SIGTERM)  # wake the waiting thread

        thread = threading.Thread(target=serve, name="composable_server prefork worker", daemon=True)
        thread.start()
        while thread.is_alive() and not orphaned:
            if signal.sigtimedwait(_STOP_SIGNALS, _PARENT_CHECK) is not None:
                break
            orphaned = os.getppid() != supervisor  # the supervisor is gone: stop
        # From the stop on, the worker has drain_timeout + 1 s to live,
        # whatever its threads do: the kernel ends it at the deadline.
        exit_deadline = time.monotonic() + self.drain_timeout + _EXIT_MARGIN
        signal.setitimer(signal.ITIMER_REAL, self.drain_timeout + _EXIT_MARGIN)
        started = time.monotonic()
        # Stop the loop (bounded: under backpressure it may be stuck until
        # the drain cuts), take what waits in the backlog, close our copy.
        threading.Thread(target=server.shutdown, name="shutdown", daemon=True).start()
        thread.join(self.drain_timeout)
        if not thread.is_alive() and not failed:
            _take_backlog(server.fileno(), server._handle_request_noblock)  # noqa: SLF001  # see _take_backlog
            _close_descriptor(self.transport)
        remaining = max(0.0, self.drain_timeout - (time.monotonic() - started))
        report = server.drain(remaining, grace=min(_DRAIN_GRACE, self.stop_timeout))
        if not report.finished:
            _logger.warning(
                "grace period over: worker %d cut %d request(s) at the deadline: %s",
                os.getpid(),
                len(report.cut),
                ", ".join(map(repr, report.cut)),
            )
        # Bounded: a loop running a handler inline (the sync dispatcher)
        # may still be in it; as a daemon thread it does not hold the exit.
        thread.join(max(0.0, exit_deadline - time.monotonic() - 0.1))
        if report.remaining:
            # Closing the dispatcher would wait for them (a pool joins its threads).
            _logger.warning(
                "worker %d exits with %d request(s) still running: %s",
                os.getpid(),
                len(report.remaining),
                ", ".join(map(repr, report.remaining)),
            )
        else:
            # Not server_close(): the transport belongs to the parent (closing
            # a Unix transport would unlink the path the others still serve).
            server.dispatcher.close()
        return 1 if failed else 0


def _close_descriptor(transport: Transport[RequestT, AddressT]) -> None:
    """Close this process's copy of *transport*'s listening socket, leaving the transport (and a Unix path) be."""
    with contextlib.suppress(TypeError, ServerClosedError):  # no real socket (a fake), or closed already
        transport.socket.close()


def _take_backlog(listener: int, accept_one: Callable[[], bool]) -> int:
    """Serve the connections waiting in a stopped server's backlog; return how many.

    *listener* is the server's listening descriptor; *accept_one* accepts and
    dispatches one connection without blocking, False if none was taken (the
    server's ``_handle_request_noblock``: ``handle_request()`` would block
    when another process took the connection first).

    A connection the kernel completed is one a client (or HAProxy) may have
    sent its request on already: left in the backlog, it is reset when the
    listener closes, a lost request; a connect refused instead is one a load
    balancer retries elsewhere.  So a stopping server takes the backlog, then
    closes its listener at once.  Bounded: an accept that keeps failing
    (EMFILE) ends it.
    """
    poller = select.poll()
    poller.register(listener, select.POLLIN)
    taken = 0
    while taken < socket.SOMAXCONN and poller.poll(0) and accept_one():
        taken += 1
    return taken


_SO_ATTACH_FILTER: Final = 26  # Linux, <asm-generic/socket.h>; the socket module does not name it
# One classic BPF instruction, BPF_RET|BPF_K with k = 0: keep no byte of any packet.
_DROP_EVERY_PACKET: Final = struct.pack("HBBI", 0x06, 0, 0, 0)


def _refuse_new_connections(transport: object) -> bool:
    """Make the TCP listener of a stopping *transport* complete no further
    connection; True if it did.  Called before :func:`_take_backlog`.

    Taking the backlog and then closing leaves a window: a connection the
    kernel completes between the last accept and the close is reset, and its
    request is lost (a loaded machine may preempt the stopping process right
    there).  A socket filter that drops every packet, attached to the
    listener, closes the window: the kernel runs a listener's filter on each
    SYN and on each handshake's last ACK, so from then on no connection joins
    the backlog, while those already in it (accepted sockets keep the filter
    they were made with: none) are taken and served.  A client whose SYN was
    dropped retries it, and meets the closed port: refused, which a load
    balancer retries on another instance.

    Only for a listener this process bound itself (a :class:`~composable_server.transports.TCPTransport`,
    under any TLS or PROXY wrappers): a socket inherited from systemd or a
    predecessor outlives this process, and the next one would inherit the
    filter.  Elsewhere (not Linux, a Unix socket, which no filter refuses)
    nothing is done.
    """
    from .transports import TCPTransport  # loaded already: the server was built from it

    inner = transport
    while not isinstance(inner, TCPTransport):
        inner = getattr(inner, "inner", None)
        if inner is None:
            return False
    if not sys.platform.startswith("linux"):
        return False
    program = ctypes.create_string_buffer(_DROP_EVERY_PACKET, len(_DROP_EVERY_PACKET))
    try:
        # struct sock_fprog { unsigned short len; struct sock_filter *filter; }; the kernel copies the program.
        inner.socket.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, struct.pack("@HP", 1, ctypes.addressof(program)))
    except (OSError, ServerClosedError) as exc:
        _logger.debug("could not stop the listener taking connections (%s): its backlog is taken, then it closes", exc)
        return False
    return True


def _die_with_parent(signum: int) -> None:
    """Have the kernel send *signum* to this process when its parent thread
    exits (``prctl(PR_SET_PDEATHSIG)``, Linux); elsewhere do nothing, and the
    worker's parent check is what notices."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if int(libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)) != 0:
            _logger.debug("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))
    except (OSError, AttributeError) as exc:  # no libc symbol table, no prctl
        _logger.debug("prctl(PR_SET_PDEATHSIG) unavailable: %s", exc)


@final
class RecyclingDispatcher:
    """A dispatcher for a prefork worker's server that retires its worker after
    *max_requests* requests (``--max-requests``), bounding what a slow leak
    in a handler can grow to.

    Once the limit is reached it sends SIGTERM to its own process: the worker
    drains as on any stop (the requests in flight, and any accepted
    meanwhile, finish) and exits 0, which the supervisor takes as a recycle,
    not a crash, and replaces it outside the restart budget.  Everything
    else is delegated to *inner*.

    Args:
        inner: the worker's dispatcher.
        max_requests: requests before the worker retires (>= 1); spread
            them with *jitter*, so that workers started together do not all
            retire together.
        jitter: a random 0..*jitter* added to *max_requests*, drawn once.
    """

    __slots__ = ("_count", "_lock", "_signalled", "inner", "limit")

    def __init__(self, inner: Dispatcher, max_requests: int, jitter: int = 0) -> None:
        if max_requests < 1 or jitter < 0:
            raise ValueError(f"need max_requests >= 1 and jitter >= 0, got {max_requests} and {jitter}")
        self.inner = inner
        self.limit = max_requests + (random.randint(0, jitter) if jitter else 0)
        self._count = 0
        self._signalled = False
        self._lock = threading.Lock()

    def dispatch(self, job: Job) -> None:
        """Hand *job* to the inner dispatcher; at the limit, ask this worker to stop."""
        self.inner.dispatch(job)
        with self._lock:
            self._count += 1
            due = self._count >= self.limit and not self._signalled
            self._signalled = self._signalled or due
        if due:
            _logger.info("worker %d served %d requests: recycling it", os.getpid(), self._count)
            os.kill(os.getpid(), signal.SIGTERM)

    def service(self) -> None:
        """The inner dispatcher's housekeeping."""
        self.inner.service()

    def join(self, timeout: float | None) -> tuple[Job, ...]:
        """The inner dispatcher's join."""
        return self.inner.join(timeout)

    def close(self) -> None:
        """Close the inner dispatcher."""
        self.inner.close()

    def __repr__(self) -> str:
        return f"<RecyclingDispatcher {self.inner!r} [{self._count}/{self.limit} requests]>"
