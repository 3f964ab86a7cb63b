"""The life of one accepted request, from the accept loop to its close.

Theory of operation
-------------------

The serving loop (:mod:`composable_server.server`) accepts and verifies a
request; everything after that happens here::

    accepted and verified, in the serving loop (a transport with
    ``late_admission``, whose client is known only after start_request, is
    verified in the job instead)
      -> Parking.park()            first-byte budget: a connection that has said
                                   nothing yet waits in the loop's poll set,
                                   costing no worker, and is closed at its deadline
      -> server.process_request()  dispatcher.dispatch(RequestPath.job(...))
    RequestJob.run(), wherever the dispatcher runs it (inline, thread, child):
      the default body             (a caller may pass its own, see below)
           lifetime                one watchdog entry: abort() at the deadline
           start_request()         transport.start_request (the TLS handshake, the
                                   PROXY header): returns the request and its client,
                                   used from here on (handler, errors, reports)
           verify_request()        only for a late-admission transport (PROXY):
                                   the verifier judges the real client; refused ->
                                   shutdown_request, no handler, no error report
           idle                    ops.limit_idle: kernel timeouts when the
                                   handler declares it can take them
           finish_request()        handler(request, client_address, server)
           handle_error()          inside `except`; not for a request that was
                                   cut (its errors are the cut's consequences)
           shutdown_request()      transport.shutdown_request (and the verifier's release)
      finished                     if accepting is paused (out of descriptors),
                                   wake the loop: this request freed one
    RequestJob.close(message)      unserved (pool full, parent after fork):
                                   ops.reject(message), close_request()
    RequestJob.abort()             drain deadline, lifetime: ops.abort, `cut`

One job type serves both ways in.  The native engine dispatches jobs with
the default body; compat's ``ThreadingMixIn`` passes stdlib's own
``process_request_thread`` as the body (which calls ``finish_request``,
``handle_error`` and ``shutdown_request`` itself, as stdlib users expect to
override), and ``ForkingMixIn`` uses the default body in the child.  Either
way the job ends with the same early wake.

Who knows what.  A job reaches its server only through :class:`RequestHost`
(the stdlib-named hooks, the transport, the timeout policy, the handler) and
its :class:`RequestPath` (the lifetime watchdog, the loop's pause flag, the
loop's wake-up).  Operations on the request itself come from the
transport's :class:`~composable_server.interfaces.RequestOps`
(:data:`STREAM_REQUESTS`, :data:`DATAGRAM_REQUESTS`), so neither the job nor
the server asks what kind of request it holds.  Whether kernel timeouts are
safe is the handler's statement (a ``kernel_timeouts_safe`` attribute), not
a guess from its class.

Forked children.  The pause flag lives in one anonymous shared page
(``mmap``), so a job finishing in a forked child sees whether its parent's
loop is paused now, not at fork time, and wakes it through the inherited
self-pipe: a child that exits frees system-wide descriptors and memory
(``ENFILE``, ``ENOBUFS``, ``ENOMEM``).

Observers.  ``RequestPath.observers`` is None for a server without any, and
:meth:`RequestJob.run` checks only that; with observers the same body runs
inside ``_run_observed``, which times it, times ``start_request`` (the TLS
handshake, the PROXY header: no transport needs to know of observers) and
classifies the end (``ok``, ``handler_error``, ``client_gone``, ``budget``,
``drain``, ``start_failed``) from what the body recorded.  A parked
connection cut at its first-byte deadline is reported by :class:`Parking`.
"""

from __future__ import annotations

import functools
import heapq
import mmap
import select
import struct
import sys
import time
from collections.abc import Callable
from socket import MSG_DONTWAIT as _MSG_DONTWAIT
from socket import MSG_PEEK as _MSG_PEEK
from socket import SHUT_RDWR as _SHUT_RDWR
from socket import SO_RCVTIMEO as _SO_RCVTIMEO
from socket import SO_SNDTIMEO as _SO_SNDTIMEO
from socket import SOL_SOCKET as _SOL_SOCKET
from socket import socket as Socket
from typing import TYPE_CHECKING, Final, Generic, Protocol, TypeVar, cast, final

from ._watchdog import Watchdog
from .interfaces import Budget, DatagramRequest, RequestFinished, RequestStarted, TransportStarted

if TYPE_CHECKING:
    from .interfaces import HandlerFactory, TimeoutPolicy, Transport
    from .observers import ObserverGroup

__all__ = (
    "DATAGRAM_REQUESTS",
    "STREAM_REQUESTS",
    "DatagramRequests",
    "Parking",
    "RequestHost",
    "RequestJob",
    "RequestPath",
    "StreamRequests",
    "takes_kernel_timeouts",
)

# Invariant: a job both hands its request to the hooks and takes back what
# start_request returned (the client address too).
RequestT = TypeVar("RequestT")
AddressT = TypeVar("AddressT")

_POLLIN: Final = select.POLLIN

# Offsets in RequestPath's shared page.
_PAUSED: Final = 0
_FINISHES: Final = 1


# -- the request operations of each kind of transport ----------------------------


@functools.lru_cache(maxsize=8)
def _timeval(seconds: float) -> bytes:
    """*seconds* as the ``struct timeval`` of ``SO_RCVTIMEO``/``SO_SNDTIMEO``."""
    whole = int(seconds)
    return struct.pack("@ll", whole, int((seconds - whole) * 1_000_000))


def _is_tls(request: Socket) -> bool:
    """True if *request* is an ``ssl.SSLSocket``.

    Without ``ssl`` imported no TLS socket can exist, so a server without TLS
    never imports it (import cost: ``ssl`` is ~10% of ``import compat``).
    """
    ssl = sys.modules.get("ssl")
    return ssl is not None and isinstance(request, ssl.SSLSocket)


@final
class StreamRequests:
    """:class:`~composable_server.interfaces.RequestOps` of stream transports:
    the request is the connected socket."""

    __slots__ = ()

    connections: Final = True

    def reject(self, request: Socket, message: bytes, client_address: object) -> None:
        """``send(message, MSG_DONTWAIT)``; a full buffer or a gone peer drops it."""
        try:
            request.send(message, _MSG_DONTWAIT)
        except (OSError, ValueError):  # ValueError: an SSLSocket takes no flags
            pass

    def abort(self, request: Socket) -> None:
        """``shutdown(SHUT_RDWR)``: a thread blocked in ``recv``/``send`` wakes."""
        try:
            request.shutdown(_SHUT_RDWR)
        except OSError:
            pass  # not connected any more: nothing is blocked on it

    def silent_fd(self, request: Socket) -> int:
        """The socket's descriptor if nothing can be read from it now (one
        ``MSG_PEEK | MSG_DONTWAIT``), else -1 (data, EOF, or an error the
        handler should see)."""
        try:
            request.recv(1, _MSG_PEEK | _MSG_DONTWAIT)
        except BlockingIOError:
            return request.fileno()
        except OSError:
            return -1  # a reset: let the handler see it
        return -1

    def limit_idle(self, request: Socket, seconds: float, *, kernel: bool) -> None:
        """``SO_RCVTIMEO``/``SO_SNDTIMEO`` (set once, no poll per call) when
        *kernel* allows and *request* is not a TLS socket (a plain or a
        :class:`~composable_server.proxy.ProxiedSocket`); else ``settimeout()``.

        A TLS socket keeps ``settimeout()``: OpenSSL reports an expired kernel
        timeout as ``SSLWantReadError``, not as the ``TimeoutError`` that
        ``handlers.SocketFile`` makes of ``EAGAIN``.
        """
        if kernel and not _is_tls(request):
            timeval = _timeval(seconds)
            request.setsockopt(_SOL_SOCKET, _SO_RCVTIMEO, timeval)
            request.setsockopt(_SOL_SOCKET, _SO_SNDTIMEO, timeval)
        else:
            request.settimeout(seconds)


@final
class DatagramRequests:
    """:class:`~composable_server.interfaces.RequestOps` of datagram
    transports: the request is ``(data, listening_socket)``, complete on
    arrival, and shares the listening socket."""

    __slots__ = ()

    connections: Final = False

    def reject(self, request: DatagramRequest, message: bytes, client_address: object) -> None:
        """``sendto(message, MSG_DONTWAIT, client_address)`` through the listening socket.

        A datagram that came through a PROXY layer (it has a
        ``proxy_address``: :class:`~composable_server.proxy.ProxiedDatagram`)
        is answered through the proxy, the only one that can relay it.
        """
        client_address = getattr(request, "proxy_address", client_address)
        if client_address is None:
            return  # an unbound Unix datagram client: it cannot be answered
        try:
            # The client address of a datagram request is the sender's socket address.
            request[1].sendto(message, _MSG_DONTWAIT, cast("tuple[str, int] | str | bytes", client_address))
        except OSError:
            pass

    def abort(self, request: DatagramRequest) -> None:
        """Nothing: no connection to cut, and the socket is the listener."""

    def silent_fd(self, request: DatagramRequest) -> int:
        """-1: a datagram has all its data already."""
        return -1

    def limit_idle(self, request: DatagramRequest, seconds: float, *, kernel: bool) -> None:
        """Nothing: replies go through the shared listening socket."""


STREAM_REQUESTS: Final = StreamRequests()
"""The request operations of every stream transport (TCP, Unix stream, TLS)."""

DATAGRAM_REQUESTS: Final = DatagramRequests()
"""The request operations of every datagram transport (UDP, Unix datagram)."""


def takes_kernel_timeouts(handler: object) -> bool:
    """True if *handler* declares ``kernel_timeouts_safe = True``: it reads and
    writes only through files that report an expired kernel timeout as
    ``TimeoutError`` (``handlers.SocketFile``).

    Others (stdlib handlers, plain callables) get ``settimeout()``: with
    kernel timeouts their buffered ``readline()`` would return a partial line.
    A :func:`functools.partial` is judged by the function it wraps.
    """
    while isinstance(handler, functools.partial):
        handler = handler.func
    return getattr(handler, "kernel_timeouts_safe", False) is True


# -- what a job needs from its server ---------------------------------------------


class RequestHost(Protocol[RequestT, AddressT]):
    """What a job and the parking use of their server: the stdlib-named
    hooks (a compat subclass may override any of them) and three components.
    :class:`~composable_server.server.Server` is one."""

    @property
    def transport(self) -> Transport[RequestT, AddressT]: ...
    @property
    def timeout_policy(self) -> TimeoutPolicy: ...
    @property
    def handler(self) -> HandlerFactory[RequestT, AddressT]: ...
    def verify_request(self, request: RequestT, client_address: AddressT) -> bool: ...
    def finish_request(self, request: RequestT, client_address: AddressT) -> None: ...
    def handle_error(self, request: RequestT, client_address: AddressT) -> None: ...
    def shutdown_request(self, request: RequestT) -> None: ...
    def close_request(self, request: RequestT) -> None: ...


@final
class RequestPath(Generic[RequestT, AddressT]):
    """A server's side of its requests: what every one of its jobs shares.

    Args:
        host: the server.
        wake: wakes the serving loop (its self-pipe); called from any thread
            or process.
        observers: told of each job's start and end (see
            :mod:`composable_server.observers`); None: nobody, at no cost.
    """

    __slots__ = ("_shared", "_wake", "host", "observers", "watchdog")

    def __init__(
        self,
        host: RequestHost[RequestT, AddressT],
        wake: Callable[[], object],
        observers: ObserverGroup | None = None,
    ) -> None:
        self.host = host
        # None without observers: the one attribute a job checks.
        self.observers = observers
        self.watchdog = Watchdog()
        self._wake = wake
        # Two bytes, MAP_SHARED | MAP_ANONYMOUS (mmap's defaults for fileno -1):
        # fork keeps them shared, so a child reads its parent's current state.
        # [_PAUSED]: accepting is paused; [_FINISHES]: jobs finished, mod 256.
        self._shared = mmap.mmap(-1, 2)

    def job(
        self,
        request: RequestT,
        client_address: AddressT,
        body: Callable[[RequestT, AddressT], object] | None = None,
    ) -> RequestJob[RequestT, AddressT]:
        """A job for one request; *body*, if given, replaces the default
        serving (see :class:`RequestJob`)."""
        return RequestJob(self, request, client_address, body)

    @property
    def paused(self) -> bool:
        """Whether the serving loop has stopped accepting for a while."""
        return self._shared[_PAUSED] != 0

    @property
    def finishes(self) -> int:
        """A count of finished jobs (mod 256), to read before an accept and
        pass to :meth:`pause` if it fails."""
        return self._shared[_FINISHES]

    def pause(self, finishes: int) -> None:
        """The loop stops accepting (an accept failed): from now on every
        finishing job wakes it.

        Args:
            finishes: :attr:`finishes` read before the accept that failed.  If
                a job finished since, its wake-up came before the flag was
                set, so wake the loop now: that job may have freed what the
                accept lacked.
        """
        shared = self._shared
        shared[_PAUSED] = 1
        if shared[_FINISHES] != finishes:
            self._wake()

    def resume(self) -> None:
        """The loop accepts again."""
        self._shared[_PAUSED] = 0

    def finished(self) -> None:
        """Called by every job once its request is shut down: count it, and
        wake a paused loop, since that request freed a descriptor.

        Counting first and :meth:`pause` setting its flag first means one of
        the two sees the other (threads: the GIL orders them).
        """
        shared = self._shared
        shared[_FINISHES] = (shared[_FINISHES] + 1) & 0xFF
        if shared[_PAUSED]:
            self._wake()

    def close(self) -> None:
        """Stop the lifetime watchdog's thread.  Idempotent."""
        self.watchdog.close()


# -- the job ------------------------------------------------------------------------


@final
class RequestJob(Generic[RequestT, AddressT]):
    """One accepted request bound to its server: the
    :class:`~composable_server.interfaces.Job` every dispatcher runs.

    Args:
        path: the server's :class:`RequestPath`.
        request, client_address: from the acceptor.
        body: None for the default serving (budget, ``start_request``,
            ``finish_request``, ``handle_error``, ``shutdown_request``);
            else called as ``body(request, client_address)`` instead, and it
            owns all of that (compat's ``process_request_thread``).

    Attributes:
        cut: set by :meth:`abort`: the server cut this connection (drain
            deadline, lifetime budget) and has reported it, so the handler's
            resulting ``BrokenPipe``/EOF errors are not reported again.
    """

    __slots__ = ("_body", "_cut_by", "_error", "_path", "client_address", "cut", "request")

    def __init__(
        self,
        path: RequestPath[RequestT, AddressT],
        request: RequestT,
        client_address: AddressT,
        body: Callable[[RequestT, AddressT], object] | None = None,
    ) -> None:
        self._path = path
        self._body = body
        self.request = request
        self.client_address = client_address
        self.cut = False
        self._cut_by: Budget | None = None
        self._error: Exception | None = None

    def run(self) -> bool:
        """Serve the request (see the class); True if the handler returned."""
        observers = self._path.observers
        if observers is not None:
            return self._run_observed(observers)
        return self._serve(self._path.host.transport.start_request)

    def _run_observed(self, observers: ObserverGroup) -> bool:
        """:meth:`_serve`, telling *observers* when it starts and how it ends."""
        client_address = self.client_address
        transport = self._path.host.transport
        transport_name = type(transport).__name__
        tls = hasattr(transport, "context")

        def start(request: RequestT, address: AddressT) -> tuple[RequestT, AddressT]:
            began = time.perf_counter()
            try:
                started = transport.start_request(request, address)
            except Exception as exc:
                observers.transport_started(
                    TransportStarted(client_address, transport_name, time.perf_counter() - began, type(exc).__name__, tls)
                )
                self._error = _StartFailed(exc)
                raise
            observers.transport_started(
                TransportStarted(client_address, transport_name, time.perf_counter() - began, None, tls)
            )
            return started

        observers.request_started(RequestStarted(client_address))
        began = time.perf_counter()
        ok = False
        try:
            ok = self._serve(start)
            return ok
        finally:
            observers.request_finished(self._finished_event(ok, time.perf_counter() - began))

    def _finished_event(self, ok: bool, duration: float) -> RequestFinished:
        error = self._error
        if self.cut:
            if self._cut_by is None:
                return RequestFinished(self.client_address, duration, "drain")
            return RequestFinished(self.client_address, duration, "budget", None, self._cut_by)
        if isinstance(error, _StartFailed):
            return RequestFinished(self.client_address, duration, "start_failed", type(error.error).__name__)
        if ok:
            return RequestFinished(self.client_address, duration, "ok")
        if error is None:  # late admission: the verifier refused it after start_request
            return RequestFinished(self.client_address, duration, "refused")
        name = type(error).__name__
        if isinstance(error, (ConnectionError, TimeoutError)):
            if isinstance(error, TimeoutError):
                return RequestFinished(self.client_address, duration, "budget", name, "idle")
            return RequestFinished(self.client_address, duration, "client_gone", name)
        return RequestFinished(self.client_address, duration, "handler_error", name)

    def _serve(self, start: Callable[[RequestT, AddressT], tuple[RequestT, AddressT]]) -> bool:
        path = self._path
        body = self._body
        if body is not None:
            try:
                body(self.request, self.client_address)
                return True
            finally:
                path.finished()
        host = path.host
        transport = host.transport
        ops = transport.request_ops
        budget = host.timeout_policy.budget if ops.connections else None
        request = self.request
        entry = None
        try:
            if budget is not None and budget.lifetime is not None:
                entry = path.watchdog.add(budget.lifetime, self._expire)
            # TLS handshakes and PROXY headers: here, in the worker, never in the accept loop.
            request, self.client_address = start(request, self.client_address)
            self.request = request
            if transport.late_admission and not host.verify_request(request, self.client_address):
                return False  # refused (the verifier logs it): released below, unserved
            if budget is not None and budget.idle is not None:
                ops.limit_idle(request, budget.idle, kernel=takes_kernel_timeouts(host.handler))
            host.finish_request(request, self.client_address)
            return True
        except Exception as exc:
            if self._error is None:
                self._error = exc
            if not self.cut:
                host.handle_error(request, self.client_address)
            return False
        finally:
            if entry is not None:
                path.watchdog.cancel(entry)
            try:
                host.shutdown_request(request)
            finally:
                path.finished()

    def _expire(self) -> None:
        # Runs on the watchdog thread: the lifetime budget ran out.
        self._cut_by = "lifetime"
        self.abort()
        self._path.host.timeout_policy.budget_exceeded(self.client_address, "lifetime")

    def close(self, message: bytes = b"") -> None:
        """Release the request unserved, sending *message* first (best effort)."""
        host = self._path.host
        if message:
            host.transport.request_ops.reject(self.request, message, self.client_address)
        host.close_request(self.request)

    def abort(self) -> None:
        """Cut the connection (any thread, any time, repeatable)."""
        self.cut = True
        self._path.host.transport.request_ops.abort(self.request)

    def __repr__(self) -> str:
        return f"<Job {self.client_address!r}>"


@final
class _StartFailed(Exception):
    """What a job records when ``start_request`` raised (*error*)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


# -- parking: the first-byte budget -----------------------------------------------


@final
class Parking(Generic[RequestT, AddressT]):
    """Connections accepted but still silent, waiting for their first byte.

    They wait in a poll set (the serving loop's, or ``handle_request``'s own),
    not in a worker, so a crowd of clients that connect and say nothing
    occupies no thread; each is handed to *dispatch* when it becomes
    readable, or shut down at its first-byte deadline.  The only
    implementation of the first-byte budget.

    Args:
        host: the server (its transport's request operations, its timeout policy).
        poller: the poll set to register parked descriptors with.
        dispatch: called with ``(request, client_address)`` of a parked
            connection that became readable (the server's guarded
            ``process_request``).
        observers: told of each connection cut at its first-byte deadline
            or at :meth:`clear`.
    """

    __slots__ = ("_dispatch", "_entries", "_heap", "_host", "_observers", "_poller")

    def __init__(
        self,
        host: RequestHost[RequestT, AddressT],
        poller: select.poll,
        dispatch: Callable[[RequestT, AddressT], object],
        observers: ObserverGroup | None = None,
    ) -> None:
        self._host = host
        self._observers = observers
        self._poller = poller
        self._dispatch = dispatch
        self._entries: dict[int, tuple[RequestT, AddressT, float]] = {}
        self._heap: list[tuple[float, int]] = []

    def __bool__(self) -> bool:
        return bool(self._entries)

    def park(self, request: RequestT, client_address: AddressT) -> bool:
        """Park *request* if a first-byte budget applies and its client has
        said nothing yet.

        Returns:
            True if parked: the parking owns the request now.  False: serve it.
        """
        host = self._host
        budget = host.timeout_policy.budget
        if budget is None or budget.first_byte is None:
            return False
        ops = host.transport.request_ops
        if not ops.connections:
            return False
        fd = ops.silent_fd(request)
        if fd < 0:
            return False
        deadline = time.monotonic() + budget.first_byte
        self._entries[fd] = (request, client_address, deadline)
        heapq.heappush(self._heap, (deadline, fd))
        self._poller.register(fd, _POLLIN)
        return True

    def ready(self, fd: int) -> bool:
        """*fd* became readable: dispatch its parked connection.  False if
        *fd* is not parked here."""
        entry = self._entries.pop(fd, None)
        if entry is None:
            return False
        self._poller.unregister(fd)
        self._dispatch(entry[0], entry[1])
        return True

    def next_deadline(self) -> float | None:
        """The earliest deadline of a parked connection (None: none parked)."""
        heap, entries = self._heap, self._entries
        while heap:
            deadline, fd = heap[0]
            entry = entries.get(fd)
            if entry is not None and entry[2] == deadline:
                return deadline
            heapq.heappop(heap)  # stale: that connection was dispatched
        return None

    def expire(self, now: float) -> None:
        """Shut down every connection whose deadline is past *now*, and report it."""
        host = self._host
        while (deadline := self.next_deadline()) is not None and deadline <= now:
            _, fd = heapq.heappop(self._heap)
            request, client_address, _ = self._entries.pop(fd)
            self._poller.unregister(fd)
            host.shutdown_request(request)
            host.timeout_policy.budget_exceeded(client_address, "first_byte")
            if self._observers is not None:
                first_byte = host.timeout_policy.budget
                waited = 0.0 if first_byte is None else first_byte.first_byte or 0.0
                self._observers.request_finished(
                    RequestFinished(client_address, waited + max(0.0, now - deadline), "budget", None, "first_byte")
                )

    def settle(self) -> None:
        """Wait until nothing is parked, dispatching or expiring each
        connection (``handle_request``, which has no loop to return to)."""
        while (deadline := self.next_deadline()) is not None:
            wait_ms = max(0.0, (deadline - time.monotonic()) * 1000.0)
            for fd, _ in self._poller.poll(wait_ms):
                self.ready(fd)
            self.expire(time.monotonic())

    def clear(self) -> None:
        """Shut down every parked connection (the loop is leaving): they never
        sent a byte, so closing them loses nothing."""
        entries, self._entries = self._entries, {}
        self._heap.clear()
        for fd, (request, client_address, _) in entries.items():
            self._poller.unregister(fd)
            self._host.shutdown_request(request)
            if self._observers is not None:
                self._observers.request_finished(RequestFinished(client_address, 0.0, "drain"))
