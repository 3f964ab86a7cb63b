"""The component contracts: one :class:`typing.Protocol` per role.

This module imports nothing from the implementation modules, so the whole
contract of a composable server can be read here.  The docstring of each
method *is* its contract: what it returns, what it raises, what it owns, and
whether calling it twice is safe.

The request pipeline (see ``shared/DESIGN.md``)::

    Transport -> Acceptor -> Verifier -> Dispatcher -> handler(request, client_address, server)
                                                            | raises
                                                            v
                                                       ErrorPolicy
    Server: the loop and the lifecycle, holds the components; TimeoutPolicy

Two type parameters run through the pipeline:

* the *request* type: a connected :class:`socket.socket` for stream
  transports, ``(data, listening_socket)`` for datagram transports;
* the *address* type: ``(host, port)`` or ``(host, port, flowinfo, scope_id)``
  for IP families, a path (``str``, or ``bytes`` for Linux abstract names) for
  Unix sockets.

A stream handler wired to a datagram transport is therefore a type error,
which is the point of making the components generic.
"""

from __future__ import annotations

import enum
import socket
from collections.abc import Callable
from socket import socket as Socket  # the Transport.socket property shadows the module
from typing import Any, Literal, Protocol, TypeAlias, TypeVar, final

import attrs


__all__ = (
    "AcceptErrorPolicy",
    "AcceptFailed",
    "Acceptor",
    "Address",
    "Budget",
    "ConnectionAccepted",
    "ConnectionBudget",
    "ConnectionRefused",
    "DatagramHandler",
    "LineHandler",
    "DatagramRequest",
    "Dispatcher",
    "DrainFinished",
    "DrainStarted",
    "ErrorPolicy",
    "HandlerFactory",
    "InetAddress",
    "IPv4Address",
    "IPv6Address",
    "Job",
    "Observer",
    "Outcome",
    "RefusalReason",
    "ReleasingVerifier",
    "RequestFinished",
    "RequestOps",
    "RequestStarted",
    "TimeoutPolicy",
    "Transport",
    "TransportStarted",
    "UnixAddress",
    "Verdict",
    "Verifier",
    "WorkerExited",
    "WorkerStarted",
)

IPv4Address: TypeAlias = tuple[str, int]
"""``(host, port)``, as ``getsockname()`` reports it for ``AF_INET``."""

IPv6Address: TypeAlias = tuple[str, int, int, int]
"""``(host, port, flowinfo, scope_id)``, as ``getsockname()`` reports it for ``AF_INET6``."""

InetAddress: TypeAlias = "IPv4Address | IPv6Address"
"""The address of an IP transport.  Which of the two is chosen at run time by
the host (``"::1"`` is IPv6 even when written as a 2-tuple), so the static type
is the union; ``address[0]`` and ``address[1]`` are ``str`` and ``int`` for both."""

UnixAddress: TypeAlias = "str | bytes"
"""A filesystem path, or ``bytes`` starting with NUL for a Linux abstract name.
An unnamed client socket reports ``''``."""

Address: TypeAlias = "InetAddress | UnixAddress"
"""Any address a transport of this package reports."""

DatagramRequest: TypeAlias = tuple[bytes, socket.socket]
"""The request of a datagram server, as in stdlib: the payload and the
listening socket to reply through (``sock.sendto(reply, client_address)``)."""

# Invariant: the server both produces requests (acceptor, start_request) and
# consumes them (handler, transport.shutdown_request), so neither direction is safe.
RequestT = TypeVar("RequestT")
AddressT = TypeVar("AddressT")
# Contravariant: a Verifier or Transport that accepts any request accepts a
# socket; a Verifier of any address accepts an IPv4 one.
RequestT_contra = TypeVar("RequestT_contra", contravariant=True)
AddressT_contra = TypeVar("AddressT_contra", contravariant=True)
# Covariant: a Transport whose address is IPv4Address is a Transport whose
# address is InetAddress.
AddressT_co = TypeVar("AddressT_co", covariant=True)

# Explicit Any, see the docstring below for why the server argument is untyped.
HandlerFactory: TypeAlias = Callable[[RequestT, AddressT, Any], object]  # type: ignore[explicit-any]
"""What the server calls once per request: ``handler(request, client_address, server)``.

Usually a request-handler class (its constructor does all the work, as in
stdlib).  The *server* argument is ``Any`` on purpose: stdlib handler classes
(``http.server.BaseHTTPRequestHandler``, ``xmlrpc.server``'s handlers) are
annotated by typeshed as taking a ``socketserver.BaseServer``, which a
composable server is not, and they must still be accepted.
"""


class DatagramHandler(Protocol[AddressT_contra]):
    """Answers one datagram with one reply: the lean handler of a datagram
    server (``handlers.DatagramResponder`` serves it; the factories'
    ``datagram_handler=`` option builds that).

    No handler object is made per datagram and no files are opened: the
    server calls :meth:`handle_datagram` with the datagram's bytes and sends
    what it returns back through the listening socket.
    """

    __slots__ = ()

    def handle_datagram(self, data: bytes, client_address: AddressT_contra) -> bytes | None:
        """Answer the datagram *data* from *client_address*.

        Returns:
            The reply, sent to *client_address* as one datagram (``b""``
            sends an empty one, as ``DatagramRequestHandler`` does); None:
            no reply.

        Raises:
            Exception: any; it goes to the server's ErrorPolicy, the
                datagram gets no reply, and the server serves on.

        Called in the dispatcher's worker (the serving thread itself with a
        ``SyncDispatcher``), concurrently with other calls under a pool: a
        handler with state must guard it.  Must not close or reconfigure the
        socket it does not see.
        """
        ...


class LineHandler(Protocol[AddressT_contra]):
    """Answers one line of a kept stream connection: the lean handler of a
    line-framed stream server (``handlers.LineResponder`` serves it; the
    stream factories' ``line_handler=`` option builds that).

    No handler object is made per message and no files are opened: the
    server reads what the connection sent, splits it into lines and calls
    :meth:`handle_line` once per complete line; between messages the
    connection is parked in the server's poll set.
    """

    __slots__ = ()

    def handle_line(self, line: bytes, client_address: AddressT_contra) -> bytes | None:
        """Answer *line* (its ``b"\\n"`` included) from *client_address*.

        Returns:
            The reply, sent on the connection (the replies to the lines of
            one read are joined into one send; ``b""``: no reply), and the
            connection stays open; None: close the connection (after the
            replies to the lines before this one).

        Raises:
            Exception: any; it goes to the server's ErrorPolicy, the
                connection is closed (replies not yet sent are lost), and
                the server serves on.

        Called in the dispatcher's worker (the serving thread itself with a
        ``SyncDispatcher``), concurrently with other calls under a pool: a
        handler with state must guard it.  A line longer than the
        responder's ``max_line_length`` never reaches it: the connection is
        closed and the reason logged.  At EOF an unterminated last line is
        dropped.
        """
        ...


class Verdict(enum.Enum):
    """What a handler that serves one message at a time decides about its
    connection once the message is answered.

    A handler factory states that it returns one by a capability attribute,
    ``parks_connections = True`` (as ``kernel_timeouts_safe``); the handler
    object it returns then carries the decision as its ``verdict``
    attribute (``handlers.ParkingRequestHandler``).  The server reads it
    from nothing else.  A second capability, ``client_speaks_first =
    True``, lets a new connection that has sent nothing yet wait parked
    too, before the handler's first read.
    """

    KEEP = "keep"
    """Keep the connection open: the server parks it in its poll set, costing
    no worker, and serves it again when it is readable."""

    CLOSE = "close"
    """Close the connection (the stdlib outcome of returning from ``handle``)."""


# The ignore below: AddressT_co is also a parameter of start_request (see there).
class Transport(Protocol[RequestT, AddressT_co]):  # type: ignore[misc]
    """Owns the listening socket: its family, type, binding and closing.

    The transport also owns what happens to an individual request
    (``start_request``, ``shutdown_request``/``close_request``, and the
    operations in :attr:`request_ops`), because that depends on the socket
    type: a stream request is a socket of its own, a datagram request shares
    the listening socket and must not be closed.  The server itself never
    looks at a request.
    """

    __slots__ = ()

    @property
    def server_address(self) -> AddressT_co:
        """The address the transport is bound to.

        Before :meth:`bind` this is the requested address; after it, the
        address the kernel reports (port 0 resolved to the chosen port).
        """
        ...

    @property
    def socket(self) -> Socket:
        """The listening socket, for acceptors and for code that needs it.

        Raises:
            TypeError: if the transport has no real socket (in-memory fakes).
            ServerClosedError: after :meth:`close`.
        """
        ...

    @property
    def nonblocking(self) -> bool:
        """True if the listening socket is non-blocking once :meth:`activate`
        ran: an accept with nothing pending raises ``BlockingIOError`` instead
        of waiting, so the serving loop may take every pending request per
        wake-up.  False: exactly one accept per readiness event."""
        ...

    @property
    def request_ops(self) -> RequestOps[RequestT]:
        """The operations on one of this transport's requests that the server
        needs while it lives (reject, abort, park, idle limit).  Stream and
        datagram transports share one implementation each
        (``composable_server.transports.STREAM_REQUESTS`` / ``DATAGRAM_REQUESTS``);
        a wrapper (TLS) returns its inner transport's."""
        ...

    def bind(self) -> None:
        """Bind the listening socket to :attr:`server_address`.

        Raises:
            BindError: the address cannot be bound (in use, permission
                denied, ...); it is an :class:`OSError` with the original errno
                and names the address.  The transport stays open: the caller
                decides whether to :meth:`close` it.
        """
        ...

    def activate(self) -> None:
        """Start accepting (``listen()`` for streams; nothing for datagrams).

        Raises:
            OSError: from ``listen()``.
        """
        ...

    def close(self) -> None:
        """Close the listening socket and release what the transport created.

        Idempotent: closing twice is a no-op.  Never raises :class:`OSError`.
        """
        ...

    def fileno(self) -> int:
        """The descriptor to wait on for incoming requests; ``-1`` after :meth:`close`."""
        ...

    def shutdown_request(self, request: RequestT) -> None:
        """Shut down and close one request the server has finished with.

        For streams: ``shutdown(SHUT_WR)`` (so the peer sees EOF after every
        byte written), then close.  For datagrams: nothing.  Never raises
        :class:`OSError`: the peer may already be gone.
        """
        ...

    def close_request(self, request: RequestT) -> None:
        """Release this process's handle on *request* without a shutdown.

        Used by the parent after fork and for rejected requests.  Idempotent,
        never raises :class:`OSError`.
        """
        ...

    @property
    def late_admission(self) -> bool:
        """True if the client is only known after :meth:`start_request` (the
        PROXY protocol layer): the server then runs its verifier in the
        worker, right after ``start_request`` and before the handler, instead
        of in the accept loop.  False for every transport whose accepted
        address is the client."""
        ...

    # A covariant parameter: the server passes only an address its acceptor
    # produced for this transport, and implementations take any address
    # (plain ones pass it through generically; the PROXY layer ignores it).
    def start_request(
        self,
        request: RequestT,
        client_address: AddressT_co,  # type: ignore[misc]  # covariant parameter, see above
    ) -> tuple[RequestT, AddressT_co]:
        """Prepare an accepted request for its handler; return what the
        handler gets and the client to judge, serve and report.

        Called in the worker (thread or child), never in the accept loop,
        just before the handler.  Plain transports return ``(request,
        client_address)`` as they are; a TLS transport performs the handshake
        here, with a deadline, and returns the wrapped socket; the PROXY
        protocol layer reads the header and returns the client it names (the
        real peer for ``LOCAL``).  From then on the server uses the returned
        address everywhere: the verifier (for a :attr:`late_admission`
        transport), the handler, ``handle_error``, budget and drain reports.

        Raises:
            OSError: the request cannot be used (failed or timed-out TLS
                handshake, bad PROXY header); the server reports it to the
                error policy and closes the request.
        """
        ...


class RequestOps(Protocol[RequestT_contra]):
    """What the server may do to one request besides handling it, for the
    requests of one kind of transport.

    Every method is called with a request this transport's acceptor produced
    (or, after ``start_request``, what that returned) and must never raise
    :class:`OSError`: the peer may be gone at any moment.
    """

    __slots__ = ()

    @property
    def connections(self) -> bool:
        """True if each request is a connection that lasts (streams): the
        connection budget (first byte, idle, lifetime) applies to it.  False
        if a request is complete on arrival (datagrams)."""
        ...

    def reject(self, request: RequestT_contra, message: bytes, client_address: object) -> None:
        """Send *message* to the client of an unserved request, best effort:
        never blocks (a full send buffer drops it), never raises.  Does not
        close the request."""
        ...

    def abort(self, request: RequestT_contra) -> None:
        """Shut the request's connection down in both directions, so a thread
        blocked reading or writing it wakes with EOF or an error.  Does not
        close it.  Safe from any thread, at any time, more than once; nothing
        for requests that are not connections."""
        ...

    def silent_fd(self, request: RequestT_contra) -> int:
        """The descriptor to wait on (``POLLIN``) until the client of a new
        request says something, or ``-1`` if there is nothing to wait for:
        data, EOF or an error is pending now, or the request is complete
        already (datagrams).  Never blocks."""
        ...

    def limit_idle(self, request: RequestT_contra, seconds: float, *, kernel: bool) -> None:
        """Bound every single read and write on *request* to *seconds*.

        Args:
            kernel: the handler reads and writes only through files that turn
                an expired kernel timeout into ``TimeoutError``
                (``handlers.SocketFile``), so the limit may be set once as
                ``SO_RCVTIMEO``/``SO_SNDTIMEO`` instead of ``settimeout()``
                (which polls before every call).  A request that cannot use
                kernel timeouts (a TLS socket) gets ``settimeout()`` anyway.
        """
        ...


class Acceptor(Protocol[RequestT, AddressT]):
    """Turns "the listening socket is readable" into one request."""

    __slots__ = ()

    def accept(self, transport: Transport[RequestT, AddressT]) -> tuple[RequestT, AddressT]:
        """Take one pending request from *transport*.

        Returns:
            ``(request, client_address)``; the caller owns the request and
            must eventually pass it to ``transport.shutdown_request`` or
            ``transport.close_request``.

        Raises:
            OSError: nothing was pending (``EAGAIN``), the peer vanished
                (``ECONNABORTED``), or the process is out of descriptors
                (``EMFILE``).  The server decides what each means.
        """
        ...


class Verifier(Protocol[RequestT_contra, AddressT_contra]):
    """Decides whether a request may be served, before any work is spent on it."""

    __slots__ = ()

    def verify(self, request: RequestT_contra, client_address: AddressT_contra) -> bool:
        """Return True to serve the request, False to close it unserved.

        Must not block for long (it runs in the accept loop) and must not
        close the request: the server does that.  An exception raised here is
        handled like a handler exception (ErrorPolicy) and the request closed.
        """
        ...


class ReleasingVerifier(Verifier[RequestT_contra, AddressT_contra], Protocol[RequestT_contra, AddressT_contra]):
    """A verifier that must learn when each request ends (a per-client
    connection cap counts requests in flight).

    Optional: the server looks for ``release`` once, when it is built
    (``composable_server.verifiers.releaser``), and a server whose verifier
    has none pays nothing per request.
    """

    __slots__ = ()

    def release(self, request: RequestT_contra) -> None:
        """Called when the server is finished with a request this verifier
        was asked about, whatever the verdict: from ``Server.shutdown_request``
        and ``Server.close_request``, before the request's socket is closed.

        *request* may be what ``Transport.start_request`` returned (the TLS
        socket) rather than what :meth:`verify` saw, and this may be called
        for requests the verifier never counted, or twice for one request;
        both must be ignored.  Called from worker threads: must be
        thread-safe, quick, and never raise.  Under a forking dispatcher the
        parent calls it when it closes its copy, right after the fork.
        """
        ...


class Job(Protocol):
    """One accepted, verified request, as the server hands it to a dispatcher.

    A job is the unit a dispatcher schedules; it knows how to serve itself.
    """

    __slots__ = ()

    @property
    def client_address(self) -> object:
        """The client address, for reports and reprs."""
        ...

    def run(self) -> bool:
        """Serve the request: call the handler, route an exception to the
        error policy, then shut the request down.

        Returns:
            True if the handler returned normally, False if it raised (the
            exception has been handled already).  ``BaseException``\\ s other
            than :class:`Exception` (``KeyboardInterrupt``, ``SystemExit``)
            propagate after the request is shut down.
        """
        ...

    def close(self, message: bytes = b"") -> None:
        """Release the request without serving it (a rejected job, or the
        parent's copy after fork).  Idempotent.

        Args:
            message: sent to the client first, best effort and without
                blocking (e.g. ``b"busy, try again\r\n"`` when a pool is full).
        """
        ...

    def abort(self) -> None:
        """Shut the request's socket down so a handler blocked in I/O wakes.

        Safe to call from any thread, at any time, more than once.
        """
        ...


class Dispatcher(Protocol):
    """Decides *where* a job runs (inline, a thread, a child process) and how
    many run at once."""

    __slots__ = ()

    def dispatch(self, job: Job) -> None:
        """Take ownership of *job* and arrange for exactly one of
        ``job.run()`` or ``job.close()`` to be called.

        May block to apply backpressure (a bounded dispatcher at capacity).

        Raises:
            ServerClosedError: after :meth:`close`; the caller still owns the job.
            OSError: the job could not be started (thread or fork failure);
                the caller still owns the job.
        """
        ...

    def service(self) -> None:
        """Do housekeeping that must happen in the serving thread (reap
        finished children).  Called once per loop iteration; never blocks."""
        ...

    def join(self, timeout: float | None) -> tuple[Job, ...]:
        """Wait up to *timeout* seconds (None: without limit) for every job
        in flight to finish.

        Returns:
            The jobs still running when the wait ended (empty when all
            finished).  Does not stop anything.
        """
        ...

    def close(self) -> None:
        """Stop accepting jobs and, if configured to block on close, wait for
        the ones in flight.  Idempotent."""
        ...


class ErrorPolicy(Protocol):
    """What an exception raised while serving a request becomes."""

    __slots__ = ()

    def handle_error(self, request: object, client_address: object, exc: BaseException) -> None:
        """Report *exc*, raised while serving *request*.

        Called inside the ``except`` block, so ``sys.exc_info()`` and a bare
        ``raise`` refer to *exc*.  The server goes on unless this raises; a
        policy that re-raises (for tests) stops the synchronous loop.
        """
        ...


class AcceptErrorPolicy(Protocol):
    """What an error from ``accept()``/``recvfrom()`` on the listening socket becomes.

    Out of descriptors (``EMFILE``), the listening socket stays readable, so a
    loop that retries at once spins at 100% CPU; this policy decides how long
    to stop polling it.
    """

    __slots__ = ()

    def accept_failed(self, exc: OSError) -> float:
        """Called when getting a request raised *exc* (the request is lost).

        Returns:
            Seconds to stop polling the listening socket before trying again
            (0: at once).  The server retries earlier when one of its
            requests finishes, since that frees a descriptor.  May log; must
            not raise.
        """
        ...

    def accepted(self) -> None:
        """Called after the first successful accept following a failure."""
        ...


class TimeoutPolicy(Protocol):
    """What happens when no request arrives in time, and how long one
    connection may take."""

    __slots__ = ()

    @property
    def timeout(self) -> float | None:
        """Seconds :meth:`Server.handle_request` waits for a request; None waits forever."""
        ...

    def handle_timeout(self) -> None:
        """Called when no request arrived within :attr:`timeout`."""
        ...

    @property
    def budget(self) -> ConnectionBudget | None:
        """Time limits for each connection (requests whose transport's
        ``request_ops.connections`` is True): the first byte is awaited in
        the serving loop, the idle and lifetime limits are set in the worker
        before the handler runs; None for no limits (stdlib)."""
        ...

    def budget_exceeded(self, client_address: object, limit: str) -> None:
        """Called when a connection was cut for exceeding its budget.

        Args:
            client_address: the client.
            limit: ``"first_byte"``, ``"idle"`` (also a kept connection
                parked too long between messages), ``"lifetime"``, or
                ``"parked"`` (a kept connection closed as the least recently
                used beyond the server's ``max_parked``).
        """
        ...


class ConnectionBudget(Protocol):
    """Per-connection time limits, in seconds (None: no limit)."""

    __slots__ = ()

    @property
    def first_byte(self) -> float | None:
        """How long a new connection may stay silent before its first byte;
        a silent one is closed without running the handler."""
        ...

    @property
    def idle(self) -> float | None:
        """How long any single read or write may block (the socket timeout)."""
        ...

    @property
    def lifetime(self) -> float | None:
        """How long a connection may last in all; then its socket is shut
        down, which wakes a handler blocked in I/O."""
        ...


# -- observing: the event records an Observer receives ----------------------------

RefusalReason: TypeAlias = Literal[
    "verifier",
    "connection_cap",
    "rate_limit",
    "cidr",
    "peer_credentials",
    "pool_full",
]
"""Why a connection was refused.  ``verifier`` is any other verifier (its
class name is in :attr:`ConnectionRefused.detail`)."""

Outcome: TypeAlias = Literal["ok", "handler_error", "budget", "drain", "client_gone", "start_failed", "refused"]
"""How a request ended: the handler returned; raised; was cut at a budget
(which: :attr:`RequestFinished.budget`); was cut by a drain or by the loop
leaving; its client went away (``ConnectionError``); ``start_request``
(TLS handshake, PROXY header) failed; or, with a transport whose
``late_admission`` verifies after ``start_request``, the verifier refused it."""

Budget: TypeAlias = Literal["first_byte", "idle", "lifetime", "parked"]
"""The connection budget that cut a request (``parked``: a kept connection
closed as the least recently used beyond the server's ``max_parked``)."""


@final
@attrs.frozen
class ConnectionAccepted:
    """The acceptor returned a request.

    Attributes:
        client_address: as the acceptor reported it.
    """

    client_address: object


@final
@attrs.frozen
class ConnectionRefused:
    """An accepted request was refused before any handler ran.

    Attributes:
        client_address: as accepted.
        reason: why (see :data:`RefusalReason`).
        detail: the refusing verifier's class name, or the error's message.
    """

    client_address: object
    reason: RefusalReason
    detail: str = ""


@final
@attrs.frozen
class RequestStarted:
    """A worker began serving a request.

    Attributes:
        client_address: as accepted.
    """

    client_address: object


@final
@attrs.frozen
class TransportStarted:
    """The transport's ``start_request`` (TLS handshake, PROXY header) returned or raised.

    Attributes:
        client_address: as accepted.
        transport: the transport's class name.
        duration: seconds ``start_request`` took.
        error: the exception's class name; None if it succeeded.
        tls: True if the transport does a TLS handshake: it, or a layer
            it wraps (``inner``, as a PROXY layer over TLS), has a
            ``context`` (``TLSTransport``).
    """

    client_address: object
    transport: str
    duration: float
    error: str | None = None
    tls: bool = False


@final
@attrs.frozen
class RequestFinished:
    """A connection ended after it was admitted.

    Attributes:
        client_address: as accepted.
        duration: seconds from ``request_started`` (from the accept, for a
            connection cut while parked).
        outcome: see :data:`Outcome`.
        error: the exception's class name (``handler_error``, ``client_gone``,
            ``start_failed``); None otherwise.
        budget: the budget that cut it (``outcome == "budget"``).
        bytes_in, bytes_out: bytes the connection received and sent, read
            at its end and only when an observer asks for them (a
            ``wants_bytes = True`` attribute, as ``AccessLog`` has): for TCP
            the kernel's counts (``TCP_INFO``; under TLS wire bytes; out:
            bytes the peer acknowledged), for a datagram its length in;
            None where unknown (Unix sockets, a kept connection between two
            messages, compat's threading body).
    """

    client_address: object
    duration: float
    outcome: Outcome
    error: str | None = None
    budget: Budget | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None


@final
@attrs.frozen
class AcceptFailed:
    """``accept()`` failed.

    Attributes:
        error: the ``OSError``'s class name and errno name, e.g. ``"OSError(EMFILE)"``.
        delay: seconds the loop pauses accepting (the back-off; 0: none).
    """

    error: str
    delay: float


@final
@attrs.frozen
class DrainStarted:
    """:meth:`Server.drain <composable_server.server.Server.drain>` began.

    Attributes:
        timeout: its deadline in seconds (None: none).
    """

    timeout: float | None


@final
@attrs.frozen
class DrainFinished:
    """A drain returned: the fields of its ``DrainReport``.

    Attributes:
        finished: every request in flight finished before the deadline.
        elapsed: seconds the drain took.
        cut: client addresses of the requests cut at the deadline.
        remaining: client addresses of the requests still running after the grace period.
    """

    finished: bool
    elapsed: float
    cut: tuple[object, ...] = ()
    remaining: tuple[object, ...] = ()


@final
@attrs.frozen
class WorkerStarted:
    """A prefork worker process started.

    Attributes:
        pid: its process id.
        replacing: the pid of the exited worker it replaces (None: first start).
    """

    pid: int
    replacing: int | None = None


@final
@attrs.frozen
class WorkerExited:
    """A prefork worker process exited (the supervisor reaped it).

    Attributes:
        pid: its process id.
        status: its exit code, or minus the signal that killed it.
    """

    pid: int
    status: int




class Observer(Protocol):
    """Told what a server does, one method per event (trio's ``Instrument``
    for connections).  The event records live in
    :mod:`composable_server.observers`, with ``BaseObserver`` to subclass.

    Every method returns None and must be quick: it runs on the serving loop
    (``connection_*``, ``accept_failed``, ``drain_*``), on the worker serving
    the request (``request_*``, ``transport_started``; a thread, or a forked
    child whose state the parent never sees) or in a prefork supervisor
    (``worker_*``), so an observer shared between threads guards its own
    state.  An exception it raises is logged by the server and never breaks
    serving.  Every accepted connection ends in exactly one
    ``connection_refused`` or ``request_finished``.
    """

    __slots__ = ()

    def connection_accepted(self, event: ConnectionAccepted) -> None:
        """The acceptor returned a request, before it is verified."""

    def connection_refused(self, event: ConnectionRefused) -> None:
        """An accepted request was refused (verifier, full pool); nothing more follows for it."""

    def request_started(self, event: RequestStarted) -> None:
        """A worker began serving a request (before ``start_request``)."""

    def transport_started(self, event: TransportStarted) -> None:
        """The transport's ``start_request`` (TLS handshake, PROXY header) returned or raised."""

    def request_finished(self, event: RequestFinished) -> None:
        """An admitted request ended, with its outcome and duration; nothing more follows for it."""

    def accept_failed(self, event: AcceptFailed) -> None:
        """``accept()`` failed, and the loop backs off for ``event.delay`` seconds."""

    def drain_started(self, event: DrainStarted) -> None:
        """``Server.drain()`` began."""

    def drain_finished(self, event: DrainFinished) -> None:
        """``Server.drain()`` is about to return ``event.report``."""

    def worker_started(self, event: WorkerStarted) -> None:
        """A prefork worker started (``event.replacing``: the worker it replaces)."""

    def worker_exited(self, event: WorkerExited) -> None:
        """A prefork worker exited and was reaped."""
