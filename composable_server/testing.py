"""In-memory fakes and contract suites, for testing servers without sockets.

Public and typed, but not imported by :mod:`composable_server` itself::

    from composable_server import Server
    from composable_server.testing import MemoryAcceptor, MemoryTransport, RecordingHandler

    transport: MemoryTransport[str, str] = MemoryTransport("memory")
    handler: RecordingHandler[str, str] = RecordingHandler()
    with Server(transport=transport, acceptor=MemoryAcceptor(), handler=handler) as server:
        transport.connect("hello", "client-1")
        server.handle_request()
    assert handler.calls == [("hello", "client-1")]
    assert transport.shutdown_requests == ["hello"]

Fakes follow one naming scheme (trio ``testing``, Twisted ``internet.testing``):

* ``Memory<Role>`` is a working in-memory implementation of the role;
* ``Raising<Role>`` injects configured errors into another implementation;
* ``Recording<Role>`` / :class:`InlineDispatcher` record what they were asked;
* hook attributes (``accept_hook``, ``dispatch_hook``, ``service_hook``, ...)
  run test code at a precise moment.

Contract suites (``check_<role>(make_...)``) are plain functions that raise
:class:`AssertionError`.  Each asserts what the docstrings of
:mod:`composable_server.interfaces` promise; the project runs every suite
against the fake *and* every real implementation, so the fakes cannot drift
from the real components.  Run them against your own components too.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import math
import os
import select
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from socket import socket as Socket  # `socket` is a property name below
from typing import Final, Generic, TypeVar, cast, final

import attrs

from .exceptions import ServerClosedError
from .interfaces import (
    AcceptErrorPolicy,
    Acceptor,
    ConnectionBudget,
    Dispatcher,
    ErrorPolicy,
    Job,
    TimeoutPolicy,
    Transport,
    Verifier,
)

__all__ = (
    "CONTRACT_WAIT",
    "ErrorRecord",
    "InlineDispatcher",
    "MemoryAcceptor",
    "MemoryRequest",
    "MemoryTransport",
    "MemoryVerifier",
    "RaisingAcceptor",
    "RecordingAcceptErrorPolicy",
    "RecordingErrorPolicy",
    "RecordingHandler",
    "RecordingTimeoutPolicy",
    "check_accept_error_policy",
    "check_acceptor",
    "check_dispatcher",
    "check_error_policy",
    "check_timeout_policy",
    "check_transport",
    "check_verifier",
)

# Invariant: a memory transport both hands out requests and takes them back.
RequestT = TypeVar("RequestT")
AddressT = TypeVar("AddressT")

# How long a contract suite waits for something that should happen at once
# (a request becoming readable, a job finishing) before declaring failure.
# Generous: the machines running the suites are shared and may be slow.
CONTRACT_WAIT: Final = 10.0


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

    Attributes:
        bind_calls, activate_calls, close_calls: how often each was called.
        shutdown_requests: requests passed to :meth:`shutdown_request`, in order.
        closed_requests: requests passed to :meth:`close_request`, in order.
        started_requests: requests passed to :meth:`start_request`, in order.
    """

    address: AddressT
    bound_address: AddressT | None = None
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

    def start_request(self, request: RequestT) -> RequestT:
        """Record *request* in :attr:`started_requests` and return it unchanged."""
        with self._lock:
            self.started_requests.append(request)
        return request

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


# -- Contract suites --------------------------------------------------------------


def _readable(fd: int, timeout: float) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout * 1000.0))


def check_transport(make_transport: Callable[[], Transport[RequestT, AddressT]]) -> None:
    """Assert the :class:`~composable_server.interfaces.Transport` contract.

    Args:
        make_transport: returns a fresh, unbound transport each call (at
            least three are made); the suite closes each one.

    Raises:
        AssertionError: a promise of the contract is broken.
    """
    # Closing a transport that was never bound is fine, and idempotent.
    fresh = make_transport()
    try:
        before = fresh.server_address
        assert fresh.server_address == before, "server_address changed without bind()"
    finally:
        fresh.close()
    fresh.close()
    assert fresh.fileno() == -1, f"fileno() is {fresh.fileno()} after close(), expected -1"

    transport = make_transport()
    try:
        transport.bind()
        transport.activate()
        bound = transport.server_address
        assert transport.server_address == bound, "server_address is not stable after bind()"
        fd = transport.fileno()
        assert fd >= 0, f"fileno() is {fd!r} while open, expected a descriptor"
        try:
            sock = transport.socket
        except TypeError:
            pass  # allowed: a transport without a real socket (in-memory fakes)
        else:
            assert isinstance(sock, Socket), f"socket is {sock!r}, expected a socket.socket"
            assert sock.fileno() == fd, "socket.fileno() differs from fileno()"
        assert not _readable(fd, 0), "fileno() is readable with no request pending"
    finally:
        transport.close()
    assert transport.fileno() == -1, f"fileno() is {transport.fileno()} after close(), expected -1"
    transport.close()  # idempotent: must not raise
    assert transport.fileno() == -1, "fileno() is not -1 after a second close()"
    try:
        transport.socket
    except ServerClosedError:
        pass
    else:
        raise AssertionError("transport.socket did not raise ServerClosedError after close()")


@contextlib.contextmanager
def _open(transport: Transport[RequestT, AddressT]) -> Iterator[Transport[RequestT, AddressT]]:
    try:
        transport.bind()
        transport.activate()
        yield transport
    finally:
        transport.close()


def check_acceptor(
    make_transport: Callable[[], Transport[RequestT, AddressT]],
    make_acceptor: Callable[[], Acceptor[RequestT, AddressT]],
    connect: Callable[[Transport[RequestT, AddressT]], AbstractContextManager[object]],
) -> None:
    """Assert the :class:`~composable_server.interfaces.Acceptor` contract,
    and the request half of the transport's.

    Args:
        make_transport: returns a fresh, unbound transport (bound, activated
            and closed by the suite).
        make_acceptor: returns the acceptor under test.
        connect: ``connect(transport)`` is a context manager that makes one
            client request pending on the bound transport and keeps the
            client alive until it exits.

    Raises:
        AssertionError: a promise of the contract is broken.
    """
    acceptor = make_acceptor()
    with _open(make_transport()) as transport:
        fd = transport.fileno()
        # One pending request: readable, accepted once, then not readable.
        with connect(transport):
            assert _readable(fd, CONTRACT_WAIT), "fileno() did not become readable for a pending request"
            request, _ = acceptor.accept(transport)
            assert not _readable(fd, 0), "fileno() still readable after the only request was accepted"
            # The caller owns the request and hands it back to the transport.
            transport.shutdown_request(request)
            transport.close_request(request)  # idempotent after shutdown: must not raise

        # Two pending requests give two distinct accepts.
        with connect(transport), connect(transport):
            requests = []
            for _ in range(2):
                assert _readable(fd, CONTRACT_WAIT), "fileno() not readable with a request pending"
                requests.append(acceptor.accept(transport)[0])
            for request in requests:
                transport.close_request(request)
                transport.close_request(request)  # idempotent

        # The peer going away first is not an error for shutdown_request.
        with connect(transport):
            assert _readable(fd, CONTRACT_WAIT), "fileno() did not become readable for a pending request"
            request, _ = acceptor.accept(transport)
        try:
            transport.shutdown_request(request)
        except OSError as exc:
            raise AssertionError(f"shutdown_request() raised {exc!r} after the peer left") from exc


def check_verifier(
    make_verifier: Callable[[], Verifier[RequestT, AddressT]],
    samples: Iterable[tuple[RequestT, AddressT]],
) -> None:
    """Assert the :class:`~composable_server.interfaces.Verifier` contract:
    ``verify`` returns a bool for each sample, promptly, without raising.

    Args:
        make_verifier: returns the verifier under test.
        samples: ``(request, client_address)`` pairs to ask about.
    """
    verifier = make_verifier()
    for request, client_address in samples:
        started = time.monotonic()
        verdict = verifier.verify(request, client_address)
        elapsed = time.monotonic() - started
        assert isinstance(verdict, bool), f"verify{(request, client_address)!r} returned {verdict!r}, not a bool"
        # "Must not block for long (it runs in the accept loop)".
        assert elapsed < 1.0, f"verify() took {elapsed:.3f}s; it runs in the accept loop"


@final
class _ContractJob:
    """A job that reports ``run``/``close`` through a pipe, so that calls made
    in a forked child are seen by the parent; optionally gated."""

    __slots__ = ("_gate", "_record", "client_address", "ident")

    def __init__(self, ident: int, record_fd: int, gate_fd: int | None) -> None:
        self.ident = ident
        self.client_address: object = ("contract", ident)
        self._record = record_fd
        self._gate = gate_fd

    def _report(self, event: str) -> None:
        # One short write(2) to a pipe is atomic (< PIPE_BUF, pipe(7)).
        os.write(self._record, f"{event} {self.ident} {os.getpid()}\n".encode())

    def run(self) -> bool:
        if self._gate is not None:
            _readable(self._gate, CONTRACT_WAIT)
        self._report("run")
        return True

    def close(self, message: bytes = b"") -> None:
        self._report("close")

    def abort(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"<contract job {self.ident}>"


@final
class _JobLog:
    """The parent's side of the contract jobs' report pipe."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = _nonblocking_pipe()
        self.gate_read, self.gate_write = _nonblocking_pipe()
        self._buffer = b""
        self._next = 0

    def job(self, *, gated: bool = False) -> _ContractJob:
        self._next += 1
        return _ContractJob(self._next, self.write_fd, self.gate_read if gated else None)

    def open_gate(self) -> None:
        os.write(self.gate_write, b"\0")  # readable for every waiter, never consumed

    def events(self) -> list[tuple[str, int, int]]:
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.read_fd, 65536):
                self._buffer += chunk
        out = []
        for line in self._buffer.decode().splitlines():
            event, ident, pid = line.split()
            out.append((event, int(ident), int(pid)))
        return out

    def check(self, jobs: Sequence[_ContractJob], *, must_run: bool) -> None:
        events = self.events()
        for job in jobs:
            mine = [(event, pid) for event, ident, pid in events if ident == job.ident]
            runs = [pid for event, pid in mine if event == "run"]
            closes = [pid for event, pid in mine if event == "close"]
            if must_run or runs:
                assert len(runs) == 1, f"{job!r} was run {len(runs)} times, expected once"
                assert runs[0] not in closes, f"{job!r} was both run and closed in process {runs[0]}"
                # Forking: the parent closes its copy once; others never close.
                assert len(closes) <= 1, f"{job!r} was closed {len(closes)} times"
            else:
                assert len(closes) == 1, f"{job!r} was neither run nor closed exactly once: {mine!r}"

    def untouched(self, job: _ContractJob) -> bool:
        return not any(ident == job.ident for _, ident, _ in self.events())

    def close(self) -> None:
        _close_fds(self.read_fd, self.write_fd, self.gate_read, self.gate_write)


def check_dispatcher(make_dispatcher: Callable[[], Dispatcher], *, concurrent: bool) -> None:
    """Assert the :class:`~composable_server.interfaces.Dispatcher` contract.

    Jobs report through a pipe, so a dispatcher that runs them in another
    process (fork) is checked like one that runs them in a thread.

    Args:
        make_dispatcher: returns a fresh dispatcher (the suite closes it).
        concurrent: True if ``dispatch`` returns before the job has finished
            (threads, processes); then in-flight jobs and ``join`` are checked.
            False for dispatchers that run the job inside ``dispatch``.

    Raises:
        AssertionError: a promise of the contract is broken.
    """
    log = _JobLog()
    try:
        # Every job is run exactly once, and nothing is left in flight.
        dispatcher = make_dispatcher()
        try:
            jobs = [log.job() for _ in range(5)]
            for job in jobs:
                dispatcher.dispatch(job)
                dispatcher.service()
            left = dispatcher.join(CONTRACT_WAIT)
            assert left == (), f"join() returned {left!r} after every job finished"
            log.check(jobs, must_run=True)
        finally:
            dispatcher.close()

        # Close: idempotent, and a closed dispatcher refuses jobs, which stay the caller's.
        dispatcher.close()
        refused = log.job()
        try:
            dispatcher.dispatch(refused)
        except ServerClosedError:
            pass
        else:
            raise AssertionError("dispatch() after close() did not raise ServerClosedError")
        dispatcher.join(CONTRACT_WAIT)
        assert log.untouched(refused), "a refused job was run or closed by the dispatcher"

        if concurrent:
            _check_in_flight(make_dispatcher, log)
    finally:
        log.close()


def _check_in_flight(make_dispatcher: Callable[[], Dispatcher], log: _JobLog) -> None:
    dispatcher = make_dispatcher()
    try:
        gated = log.job(gated=True)
        dispatcher.dispatch(gated)
        started = time.monotonic()
        dispatcher.service()
        assert time.monotonic() - started < 1.0, "service() blocked while a job was in flight"
        left = dispatcher.join(0.01)
        # The dispatcher may report its own handle on the job (a forking
        # dispatcher reports the child); it carries the job's client address.
        assert [job.client_address for job in left] == [gated.client_address], (
            f"join(0.01) returned {left!r} while {gated!r} was running"
        )
        log.open_gate()
        left = dispatcher.join(CONTRACT_WAIT)
        assert left == (), f"join() returned {left!r} after the job finished"
        log.check([gated], must_run=True)
    finally:
        log.open_gate()
        dispatcher.close()
    dispatcher.close()


def check_error_policy(make_policy: Callable[[], ErrorPolicy], *, reraises: bool = False) -> None:
    """Assert the :class:`~composable_server.interfaces.ErrorPolicy` contract.

    Called inside an ``except`` block, a policy returns normally (the server
    goes on), or, if *reraises*, raises that very exception again.

    Args:
        make_policy: returns the policy under test.
        reraises: the policy is documented to re-raise (e.g. ``ReRaise``).
    """
    policy = make_policy()
    samples: list[tuple[object, object, BaseException]] = [
        (object(), ("127.0.0.1", 5555), ValueError("contract check")),
        (None, "/tmp/contract.sock", OSError(errno.ECONNRESET, "reset")),
        ((b"data", None), ("::1", 5555, 0, 0), KeyError("contract")),
    ]
    for request, client_address, exc in samples:
        try:
            raise exc
        except BaseException as caught:
            try:
                policy.handle_error(request, client_address, caught)
            except BaseException as raised:
                if not reraises:
                    raise AssertionError(f"{policy!r} raised {raised!r}; it must not") from raised
                assert raised is exc, f"{policy!r} raised {raised!r}, expected the original {exc!r}"
            else:
                assert not reraises, f"{policy!r} did not re-raise {exc!r}"


def check_timeout_policy(make_policy: Callable[[], TimeoutPolicy]) -> None:
    """Assert the :class:`~composable_server.interfaces.TimeoutPolicy` contract:
    ``timeout`` is None or a number of seconds >= 0, stable between reads, and
    ``handle_timeout()`` can be called repeatedly.

    Args:
        make_policy: returns the policy under test.
    """
    policy = make_policy()
    timeout = policy.timeout
    if timeout is not None:
        assert not isinstance(timeout, bool), f"timeout is {timeout!r}, expected None or seconds"
        assert not math.isnan(timeout) and timeout >= 0, f"timeout is {timeout!r}, expected >= 0"
    assert policy.timeout == timeout, "timeout changed between two reads"
    policy.handle_timeout()
    policy.handle_timeout()
    budget = policy.budget
    if budget is not None:
        for name in ("first_byte", "idle", "lifetime"):
            limit: float | None = getattr(budget, name)
            assert limit is None or limit > 0, f"budget.{name} is {limit!r}, expected None or seconds > 0"
    for limit_name in ("first_byte", "idle", "lifetime"):
        policy.budget_exceeded(("127.0.0.1", 5555), limit_name)


def check_accept_error_policy(make_policy: Callable[[], AcceptErrorPolicy]) -> None:
    """Assert the :class:`~composable_server.interfaces.AcceptErrorPolicy`
    contract: ``accept_failed`` returns a pause in seconds >= 0 for transient
    and capacity errors alike and never raises; ``accepted`` can always be called.

    Args:
        make_policy: returns a fresh policy.
    """
    policy = make_policy()
    policy.accepted()  # before any failure: nothing to reset, must not raise
    for code in (errno.ECONNABORTED, errno.EMFILE, errno.EMFILE, errno.ENFILE, errno.ENOBUFS):
        try:
            delay = policy.accept_failed(OSError(code, os.strerror(code)))
        except Exception as exc:
            raise AssertionError(f"accept_failed({errno.errorcode[code]}) raised {exc!r}") from exc
        assert not isinstance(delay, bool), f"accept_failed returned {delay!r}, expected seconds"
        assert not math.isnan(delay) and delay >= 0, f"accept_failed returned {delay!r}, expected seconds >= 0"
    policy.accepted()
