"""The in-memory fakes: one working implementation (or error injector, or
recorder) per component role, and a recording handler.

Re-exported by :mod:`composable_server.testing`; see its docstring for the
naming scheme.
"""

from __future__ import annotations

import collections
import errno
import os
import select
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from socket import socket as Socket  # `socket` is a property name below
from typing import Generic, TypeVar, cast, final

import attrs

from ..exceptions import ServerClosedError
from ..interfaces import (
    AcceptFailed,
    Acceptor,
    ConnectionAccepted,
    ConnectionBudget,
    ConnectionRefused,
    DrainFinished,
    DrainStarted,
    Job,
    RequestFinished,
    RequestStarted,
    Transport,
    TransportStarted,
    WorkerExited,
    WorkerStarted,
)

__all__ = (
    "ErrorRecord",
    "InlineDispatcher",
    "MemoryAcceptor",
    "MemoryRequest",
    "MemoryRequestOps",
    "MemoryTransport",
    "MemoryVerifier",
    "RaisingAcceptor",
    "RecordingAcceptErrorPolicy",
    "RecordingErrorPolicy",
    "RecordingHandler",
    "RecordingObserver",
    "RecordingTimeoutPolicy",
)

# Invariant: a memory transport both hands out requests and takes them back.
RequestT = TypeVar("RequestT")
AddressT = TypeVar("AddressT")
EventT = TypeVar("EventT")

def _nonblocking_pipe() -> tuple[int, int]:
    return os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)


def _close_fds(*fds: int) -> None:
    for fd in fds:
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


# -- Transport ------------------------------------------------------------------


def _readable_now(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


@final
@attrs.define(eq=False)
class MemoryRequestOps:
    """Request operations for requests without a socket: they record what the
    server did, and let a test park a request as a silent connection.

    Args:
        connections: what :attr:`connections` reports (True: the
            connection budget applies, as for streams).
        abort_hook: called with each request :meth:`abort` was given, after
            it was recorded (e.g. to wake a handler a test blocked).

    Attributes:
        silent: request -> a descriptor the test owns (e.g. the read end of an
            ``os.pipe()``): while it is not readable, :meth:`silent_fd`
            returns it, so a server with a first-byte budget parks the
            request until the test writes to the other end.  Keyed by
            identity-hashable requests (``MemoryRequest``, strings).
        rejected: ``(request, message, client_address)`` of every :meth:`reject`.
        aborted: every request passed to :meth:`abort`, in order.
        idle_limits: ``(request, seconds, kernel)`` of every :meth:`limit_idle`.
    """

    connections: bool = True
    abort_hook: Callable[[object], object] | None = attrs.field(default=None, kw_only=True)
    silent: dict[object, int] = attrs.field(init=False, factory=dict)
    rejected: list[tuple[object, bytes, object]] = attrs.field(init=False, factory=list)
    aborted: list[object] = attrs.field(init=False, factory=list)
    idle_limits: list[tuple[object, float, bool]] = attrs.field(init=False, factory=list)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)

    def reject(self, request: object, message: bytes, client_address: object) -> None:
        """Record the call (and ``send`` *message* on a :class:`MemoryRequest`)."""
        with self._lock:
            self.rejected.append((request, message, client_address))
        if isinstance(request, MemoryRequest) and not request.closed:
            request.send(message)

    def abort(self, request: object) -> None:
        """Record the call, then run *abort_hook* (a test's stand-in for the
        blocked ``recv`` that a real shutdown wakes)."""
        with self._lock:
            self.aborted.append(request)
        if self.abort_hook is not None:
            self.abort_hook(request)

    def silent_fd(self, request: object) -> int:
        """The descriptor in :attr:`silent` for *request* while it is not
        readable; else -1."""
        fd = self.silent.get(request, -1)
        if fd >= 0 and _readable_now(fd):
            return -1
        return fd

    def limit_idle(self, request: object, seconds: float, *, kernel: bool) -> None:
        """Record the call."""
        with self._lock:
            self.idle_limits.append((request, seconds, kernel))



@final
@attrs.define(eq=False, repr=False)
class MemoryTransport(Generic[RequestT, AddressT]):
    """A transport without a socket: requests are queued by :meth:`connect`.

    Readiness is real: each queued request writes one byte to an ``os.pipe()``
    whose read end is :meth:`fileno`, and each accept consumes one, so the
    real :meth:`Server.serve_forever` poll loop runs on it unchanged.

    Args:
        address: :attr:`server_address` before :meth:`bind`.
        bound_address: :attr:`server_address` after :meth:`bind` (default:
            *address*), to mimic port 0 being resolved.
        nonblocking: what :attr:`nonblocking` reports (True: the serving loop
            takes every queued request per wake-up, up to its batch).
        request_ops: the request operations (default: a fresh
            :class:`MemoryRequestOps`, which records what the server did).
        start_hook: called with each request in :meth:`start_request`
            after it was recorded; may raise, as a failed TLS handshake does.
        clients: what :meth:`start_request` makes of each accepted
            ``(request, client_address)``: a mapping from an accepted address
            to the client it stands for (as a PROXY header names one); an
            address not in it passes unchanged.
        late_admission: what :attr:`late_admission` reports (True: the
            server verifies each request after :meth:`start_request`).

    Attributes:
        bind_calls, activate_calls, close_calls: how often each was called.
        shutdown_requests: requests passed to :meth:`shutdown_request`, in order.
        closed_requests: requests passed to :meth:`close_request`, in order.
        started_requests: requests passed to :meth:`start_request`, in order.
    """

    address: AddressT
    bound_address: AddressT | None = None
    nonblocking: bool = attrs.field(default=False, kw_only=True)
    request_ops: MemoryRequestOps = attrs.field(factory=MemoryRequestOps, kw_only=True)
    start_hook: Callable[[RequestT], object] | None = attrs.field(default=None, kw_only=True)
    clients: Mapping[object, AddressT] = attrs.field(factory=dict, kw_only=True)
    late_admission: bool = attrs.field(default=False, kw_only=True)
    bind_calls: int = attrs.field(init=False, default=0)
    activate_calls: int = attrs.field(init=False, default=0)
    close_calls: int = attrs.field(init=False, default=0)
    shutdown_requests: list[RequestT] = attrs.field(init=False, factory=list)
    closed_requests: list[RequestT] = attrs.field(init=False, factory=list)
    started_requests: list[RequestT] = attrs.field(init=False, factory=list)
    _queue: collections.deque[tuple[RequestT, AddressT]] = attrs.field(init=False, factory=collections.deque)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    _pipe: tuple[int, int] = attrs.field(init=False, factory=_nonblocking_pipe)
    _bound: bool = attrs.field(init=False, default=False)
    _closed: bool = attrs.field(init=False, default=False)

    # -- the test's side -------------------------------------------------------

    def connect(self, request: RequestT, client_address: AddressT) -> None:
        """Queue *request* from *client_address*; :meth:`fileno` becomes readable.

        Thread-safe.

        Raises:
            ServerClosedError: the transport is closed.
        """
        with self._lock:
            if self._closed:
                raise ServerClosedError(f"cannot connect to {self!r}: it is closed")
            self._queue.append((request, client_address))
            os.write(self._pipe[1], b"\0")

    def next_request(self) -> tuple[RequestT, AddressT]:
        """Dequeue the oldest request (what :class:`MemoryAcceptor` calls).

        Raises:
            BlockingIOError: nothing is queued (``EAGAIN``, as a non-blocking ``accept``).
            ServerClosedError: the transport is closed.
        """
        with self._lock:
            if self._closed:
                raise ServerClosedError(f"cannot accept from {self!r}: it is closed")
            if not self._queue:
                raise BlockingIOError(errno.EAGAIN, "no request queued on the memory transport")
            os.read(self._pipe[0], 1)
            return self._queue.popleft()

    @property
    def pending(self) -> tuple[tuple[RequestT, AddressT], ...]:
        """The queued ``(request, client_address)`` pairs not accepted yet."""
        with self._lock:
            return tuple(self._queue)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    # -- Transport protocol ------------------------------------------------------

    @property
    def server_address(self) -> AddressT:
        """*address* before :meth:`bind`; *bound_address* (if given) after."""
        if self._bound and self.bound_address is not None:
            return self.bound_address
        return self.address

    @property
    def socket(self) -> Socket:
        """Always raises: a memory transport has no socket.

        Raises:
            TypeError: while open.
            ServerClosedError: after :meth:`close`.
        """
        if self._closed:
            raise ServerClosedError(f"{self!r} is closed")
        raise TypeError(f"{type(self).__name__} has no socket; use connect() to queue requests")

    def bind(self) -> None:
        """Record the call; :attr:`server_address` becomes *bound_address*."""
        self.bind_calls += 1
        self._bound = True

    def activate(self) -> None:
        """Record the call."""
        self.activate_calls += 1

    def close(self) -> None:
        """Close the readiness pipe; queued requests stay in :attr:`pending`.  Idempotent."""
        with self._lock:
            self.close_calls += 1
            if self._closed:
                return
            self._closed = True
            _close_fds(*self._pipe)
            self._pipe = (-1, -1)

    def fileno(self) -> int:
        """The read end of the readiness pipe; ``-1`` after :meth:`close`."""
        return self._pipe[0]

    def shutdown_request(self, request: RequestT) -> None:
        """Record *request* in :attr:`shutdown_requests` (and close it if it has ``close()``)."""
        with self._lock:
            self.shutdown_requests.append(request)
        _close_if_closable(request)

    def close_request(self, request: RequestT) -> None:
        """Record *request* in :attr:`closed_requests` (and close it if it has ``close()``)."""
        with self._lock:
            self.closed_requests.append(request)
        _close_if_closable(request)

    def start_request(self, request: RequestT, client_address: AddressT) -> tuple[RequestT, AddressT]:
        """Record *request* in :attr:`started_requests`, run *start_hook*; return it unchanged,
        with the client :attr:`clients` names for *client_address* (else
        *client_address*)."""
        with self._lock:
            self.started_requests.append(request)
        if self.start_hook is not None:
            self.start_hook(request)
        return request, self.clients.get(client_address, client_address)

    @property
    def finished_requests(self) -> list[RequestT]:
        """Every request passed to :meth:`shutdown_request` or :meth:`close_request`."""
        with self._lock:
            return self.shutdown_requests + self.closed_requests

    def __repr__(self) -> str:
        state = "closed" if self._closed else "bound" if self._bound else "unbound"
        return f"<MemoryTransport {self.server_address!r} {state} [{len(self._queue)} queued]>"


def _close_if_closable(request: object) -> None:
    if isinstance(request, MemoryRequest):
        request.close()


@final
@attrs.define(eq=False)
class MemoryRequest:
    """A fake connected socket with scripted input, for handlers that call
    ``recv``/``sendall`` on their request.

    Args:
        data: what ``recv`` returns, in order; ``b""`` (EOF) once used up.

    Attributes:
        sent: everything passed to ``sendall``/``send``.
        closed: whether ``close()`` was called (a memory transport closes its
            requests when the server is done with them).
    """

    data: bytes = b""
    sent: bytearray = attrs.field(init=False, factory=bytearray)
    closed: bool = attrs.field(init=False, default=False)
    _offset: int = attrs.field(init=False, default=0)

    def recv(self, bufsize: int) -> bytes:
        """Return up to *bufsize* scripted bytes (``b""`` at the end)."""
        if self.closed:
            raise OSError(errno.EBADF, "recv on a closed MemoryRequest")
        chunk = self.data[self._offset : self._offset + bufsize]
        self._offset += len(chunk)
        return chunk

    def sendall(self, data: bytes) -> None:
        """Append *data* to :attr:`sent`."""
        if self.closed:
            raise OSError(errno.EBADF, "sendall on a closed MemoryRequest")
        self.sent += data

    def send(self, data: bytes) -> int:
        """Append *data* to :attr:`sent`; return its length."""
        self.sendall(data)
        return len(data)

    def close(self) -> None:
        """Mark closed.  Idempotent."""
        self.closed = True


# -- Acceptors ------------------------------------------------------------------


@final
@attrs.define(eq=False)
class MemoryAcceptor:
    """Takes the next queued request from a :class:`MemoryTransport`.

    Attributes:
        accept_hook: called with no arguments at the start of every
            :meth:`accept` (before the queue is read); may queue a request or raise.
        accepted: every ``(request, client_address)`` returned, in order.
    """

    accept_hook: Callable[[], object] | None = None
    accepted: list[tuple[object, object]] = attrs.field(init=False, factory=list)

    def accept(self, transport: Transport[RequestT, AddressT]) -> tuple[RequestT, AddressT]:
        """Dequeue one request from *transport*.

        Raises:
            TypeError: *transport* is not a :class:`MemoryTransport`.
            BlockingIOError: nothing queued (``EAGAIN``).
            ServerClosedError: the transport is closed.
        """
        if self.accept_hook is not None:
            self.accept_hook()
        if not isinstance(transport, MemoryTransport):
            raise TypeError(f"MemoryAcceptor needs a MemoryTransport, got {type(transport).__name__}")
        # isinstance() cannot narrow the type arguments; connect() put them in.
        pair = cast("tuple[RequestT, AddressT]", transport.next_request())
        self.accepted.append(pair)
        return pair


def _error_script(items: Iterable[int | OSError | None]) -> collections.deque[int | OSError | None]:
    return collections.deque(items)


def _verdict_script(items: Iterable[bool]) -> collections.deque[bool]:
    return collections.deque(items)


def _as_oserror(item: int | OSError) -> OSError:
    if isinstance(item, OSError):
        return item
    return OSError(item, os.strerror(item))


@final
@attrs.define(eq=False)
class RaisingAcceptor(Generic[RequestT, AddressT]):
    """Wraps an acceptor and raises scripted :class:`OSError`\\ s first.

    Each :meth:`accept` takes the next item of *errors*: an errno (raised as
    ``OSError(errno, strerror)``), an :class:`OSError` instance (raised as
    is), or None (delegate this one accept).  Once the script is used up every
    accept delegates to *inner*.  A raised error does not consume the pending
    request, as a real ``EMFILE`` leaves the connection in the backlog.

    Args:
        inner: the acceptor to delegate to.
        errors: the script, e.g. ``[errno.EMFILE, errno.ECONNABORTED]``.

    Attributes:
        raised: the errors raised so far, in order.
    """

    inner: Acceptor[RequestT, AddressT]
    errors: collections.deque[int | OSError | None] = attrs.field(converter=_error_script, factory=list)
    raised: list[OSError] = attrs.field(init=False, factory=list)

    def accept(self, transport: Transport[RequestT, AddressT]) -> tuple[RequestT, AddressT]:
        """Raise the next scripted error, or delegate to *inner*."""
        item = self.errors.popleft() if self.errors else None
        if item is None:
            return self.inner.accept(transport)
        exc = _as_oserror(item)
        self.raised.append(exc)
        raise exc


# -- Verifier -------------------------------------------------------------------


@final
@attrs.define(eq=False)
class MemoryVerifier:
    """A verifier with scripted verdicts that records every question.

    Args:
        verdict: the answer: a bool, or a predicate called with
            ``(request, client_address)`` (it may raise, to test that path).
        script: answers used first, one per call, before *verdict*.

    Attributes:
        calls: every ``(request, client_address)`` asked, in order.
    """

    verdict: bool | Callable[[object, object], bool] = True
    script: collections.deque[bool] = attrs.field(converter=_verdict_script, factory=list)
    calls: list[tuple[object, object]] = attrs.field(init=False, factory=list)

    def verify(self, request: object, client_address: object) -> bool:
        """Record the call; return the next scripted verdict, else *verdict*."""
        self.calls.append((request, client_address))
        if self.script:
            return self.script.popleft()
        if isinstance(self.verdict, bool):
            return self.verdict
        return self.verdict(request, client_address)


# -- Dispatcher -----------------------------------------------------------------


@final
@attrs.define(eq=False, repr=False)
class InlineDispatcher:
    """Runs jobs in the calling thread and records them.

    With *hold*, a job is not run at dispatch but kept pending until the test
    calls :meth:`release` (or :meth:`discard`), so in-flight jobs, ``join()``
    and ``close()`` can be tested from a single thread.

    Args:
        hold: keep jobs pending instead of running them.
        dispatch_hook: called with the job before it is accepted; may raise
            (e.g. ``OSError``) to simulate a dispatcher that cannot start it,
            in which case the caller keeps the job.
        service_hook: called by every :meth:`service` (in the serving thread).

    Attributes:
        dispatched: every job accepted, in order.
        results: ``(job, job.run() result)`` for every job run.
        service_calls: how often :meth:`service` ran.
    """

    hold: bool = False
    dispatch_hook: Callable[[Job], object] | None = None
    service_hook: Callable[[], object] | None = None
    dispatched: list[Job] = attrs.field(init=False, factory=list)
    results: list[tuple[Job, bool]] = attrs.field(init=False, factory=list)
    service_calls: int = attrs.field(init=False, default=0)
    _pending: list[Job] = attrs.field(init=False, factory=list)
    _cond: threading.Condition = attrs.field(init=False, factory=threading.Condition)
    _closed: bool = attrs.field(init=False, default=False)

    @property
    def pending(self) -> tuple[Job, ...]:
        """Jobs held and neither released nor discarded."""
        with self._cond:
            return tuple(self._pending)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def dispatch(self, job: Job) -> None:
        """Run *job* now, or hold it.

        Raises:
            ServerClosedError: after :meth:`close`; the caller keeps the job.
        """
        if self._closed:
            raise ServerClosedError("InlineDispatcher is closed")
        if self.dispatch_hook is not None:
            self.dispatch_hook(job)
        with self._cond:
            self.dispatched.append(job)
            if self.hold:
                self._pending.append(job)
                return
        self._run(job)

    def _run(self, job: Job) -> None:
        try:
            ok = job.run()
        finally:
            with self._cond:
                self._cond.notify_all()
        with self._cond:
            self.results.append((job, ok))

    def release(self, count: int | None = None) -> int:
        """Run up to *count* held jobs (all when None), oldest first, in this thread.

        Returns:
            How many were run.
        """
        ran = 0
        while count is None or ran < count:
            with self._cond:
                if not self._pending:
                    break
                job = self._pending.pop(0)
            ran += 1
            self._run(job)
        return ran

    def discard(self) -> int:
        """Close every held job unserved (``job.close()``).

        Returns:
            How many were closed.
        """
        with self._cond:
            jobs, self._pending = self._pending, []
            self._cond.notify_all()
        for job in jobs:
            job.close()
        return len(jobs)

    def service(self) -> None:
        """Count the call and run *service_hook*."""
        self.service_calls += 1
        if self.service_hook is not None:
            self.service_hook()

    def join(self, timeout: float | None) -> tuple[Job, ...]:
        """Wait up to *timeout* seconds for the held jobs to be released.

        Returns:
            The jobs still held.
        """
        with self._cond:
            self._cond.wait_for(lambda: not self._pending, timeout)
            return tuple(self._pending)

    def close(self) -> None:
        """Refuse further jobs.  Held jobs stay held (the test releases or
        discards them).  Idempotent."""
        self._closed = True

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<InlineDispatcher [{len(self.dispatched)} dispatched, {len(self._pending)} held]{state}>"


# -- Policies -------------------------------------------------------------------


@final
@attrs.frozen
class ErrorRecord:
    """One call of :meth:`RecordingErrorPolicy.handle_error`.

    Attributes:
        in_except: whether ``sys.exc_info()`` referred to *exc* during the
            call, i.e. it was called inside the ``except`` block as promised.
        thread: the ident of the calling thread.
    """

    request: object
    client_address: object
    exc: BaseException
    in_except: bool
    thread: int


@final
@attrs.define(eq=False)
class RecordingErrorPolicy:
    """An error policy that records every error (and reports nothing).

    Attributes:
        errors: one :class:`ErrorRecord` per call.
        error_hook: called with the exception after it was recorded; may raise
            (to test a policy that stops the server).
    """

    error_hook: Callable[[BaseException], object] | None = None
    errors: list[ErrorRecord] = attrs.field(init=False, factory=list)
    _cond: threading.Condition = attrs.field(init=False, factory=threading.Condition)

    def handle_error(self, request: object, client_address: object, exc: BaseException) -> None:
        """Record the call."""
        record = ErrorRecord(request, client_address, exc, sys.exc_info()[1] is exc, threading.get_ident())
        with self._cond:
            self.errors.append(record)
            self._cond.notify_all()
        if self.error_hook is not None:
            self.error_hook(exc)

    @property
    def exceptions(self) -> list[BaseException]:
        """The recorded exceptions, in order."""
        with self._cond:
            return [record.exc for record in self.errors]

    def wait_for(self, count: int, timeout: float) -> bool:
        """Wait until at least *count* errors were recorded; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.errors) >= count, timeout)


@final
@attrs.define(eq=False)
class RecordingTimeoutPolicy:
    """A timeout policy with a settable timeout that counts its timeouts.

    Args:
        timeout: seconds ``handle_request()`` waits; None waits forever.
            May be changed between calls.
        timeout_hook: called by every :meth:`handle_timeout`.
        budget: the per-connection limits to report (None: none).

    Attributes:
        timeouts: how often :meth:`handle_timeout` was called.
        exceeded: ``(client_address, limit)`` of every :meth:`budget_exceeded` call.
    """

    timeout: float | None = None
    timeout_hook: Callable[[], object] | None = None
    budget: ConnectionBudget | None = None
    timeouts: int = attrs.field(init=False, default=0)
    exceeded: list[tuple[object, str]] = attrs.field(init=False, factory=list)

    def budget_exceeded(self, client_address: object, limit: str) -> None:
        """Record the call."""
        self.exceeded.append((client_address, limit))

    def handle_timeout(self) -> None:
        """Count the call and run *timeout_hook*."""
        self.timeouts += 1
        if self.timeout_hook is not None:
            self.timeout_hook()


@final
@attrs.define(eq=False)
class RecordingAcceptErrorPolicy:
    """An accept-error policy that records failures and returns a fixed pause.

    Args:
        delay: what :meth:`accept_failed` returns (seconds to stop polling).

    Attributes:
        failures: every error passed to :meth:`accept_failed`, in order.
        recoveries: how often :meth:`accepted` was called.
    """

    delay: float = 0.0
    failures: list[OSError] = attrs.field(init=False, factory=list)
    recoveries: int = attrs.field(init=False, default=0)

    def accept_failed(self, exc: OSError) -> float:
        """Record *exc*; return *delay*."""
        self.failures.append(exc)
        return self.delay

    def accepted(self) -> None:
        """Count the recovery."""
        self.recoveries += 1


# -- Handler --------------------------------------------------------------------


@final
@attrs.define(eq=False)
class RecordingHandler(Generic[RequestT, AddressT]):
    """A handler factory that records every request it is given.

    Args:
        action: called as ``action(request, client_address, server)`` after
            the call was recorded; may raise to exercise the error policy.

    Attributes:
        calls: every ``(request, client_address)`` handled, in order.
        servers: the server object of each call.
        threads: the ident of the thread of each call.
    """

    action: Callable[[RequestT, AddressT, object], object] | None = None
    calls: list[tuple[RequestT, AddressT]] = attrs.field(init=False, factory=list)
    servers: list[object] = attrs.field(init=False, factory=list)
    threads: list[int] = attrs.field(init=False, factory=list)
    _cond: threading.Condition = attrs.field(init=False, factory=threading.Condition)

    def __call__(self, request: RequestT, client_address: AddressT, server: object) -> None:
        """Record the call, then run *action*."""
        with self._cond:
            self.calls.append((request, client_address))
            self.servers.append(server)
            self.threads.append(threading.get_ident())
            self._cond.notify_all()
        if self.action is not None:
            self.action(request, client_address, server)

    def wait_for(self, count: int, timeout: float) -> bool:
        """Wait until at least *count* calls were recorded; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.calls) >= count, timeout)




@final
@attrs.define(eq=False)
class RecordingObserver:
    """An :class:`~composable_server.interfaces.Observer` that records every
    event, in order, from any thread.

    Attributes:
        events: ``(method name, event record)`` for each call, in order.
        raises: if set, raised from every call after it was recorded (to
            test that a failing observer never breaks serving).
        wants_bytes: asks the server for the byte counts of each finished
            request (``RequestFinished.bytes_in``/``bytes_out``).
    """

    raises: Exception | None = None
    wants_bytes: bool = attrs.field(default=False, kw_only=True)
    events: list[tuple[str, object]] = attrs.field(init=False, factory=list)
    _cond: threading.Condition = attrs.field(init=False, factory=threading.Condition)

    def _record(self, name: str, event: object) -> None:
        with self._cond:
            self.events.append((name, event))
            self._cond.notify_all()
        if self.raises is not None:
            raise self.raises

    def names(self) -> list[str]:
        """The method names of the events so far, in order."""
        with self._cond:
            return [name for name, _ in self.events]

    def of(self, kind: type[EventT]) -> list[EventT]:
        """The event records of type *kind* (e.g. ``RequestFinished``), in order."""
        with self._cond:
            return [event for _, event in self.events if isinstance(event, kind)]

    def wait_for(self, name: str | tuple[str, ...], count: int, timeout: float) -> bool:
        """Wait until at least *count* events of method *name* (or of any of
        several names) were recorded; False on timeout."""
        names = (name,) if isinstance(name, str) else name
        with self._cond:
            return self._cond.wait_for(lambda: sum(n in names for n, _ in self.events) >= count, timeout)

    def connection_accepted(self, event: ConnectionAccepted) -> None:
        """Record it."""
        self._record("connection_accepted", event)

    def connection_refused(self, event: ConnectionRefused) -> None:
        """Record it."""
        self._record("connection_refused", event)

    def request_started(self, event: RequestStarted) -> None:
        """Record it."""
        self._record("request_started", event)

    def transport_started(self, event: TransportStarted) -> None:
        """Record it."""
        self._record("transport_started", event)

    def request_finished(self, event: RequestFinished) -> None:
        """Record it."""
        self._record("request_finished", event)

    def accept_failed(self, event: AcceptFailed) -> None:
        """Record it."""
        self._record("accept_failed", event)

    def drain_started(self, event: DrainStarted) -> None:
        """Record it."""
        self._record("drain_started", event)

    def drain_finished(self, event: DrainFinished) -> None:
        """Record it."""
        self._record("drain_finished", event)

    def worker_started(self, event: WorkerStarted) -> None:
        """Record it."""
        self._record("worker_started", event)

    def worker_exited(self, event: WorkerExited) -> None:
        """Record it."""
        self._record("worker_exited", event)
