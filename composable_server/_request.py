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
    kept connections               a handler that parks connections (below)
                                   said KEEP: the job goes back to the loop,
                                   which parks it and dispatches it again
    RequestJob.close(message)      unserved (pool full, parent after fork):
                                   ops.reject(message), close_request()
    RequestJob.abort()             drain deadline, lifetime: ops.abort, `cut`

One job type serves both ways in.  The native engine dispatches jobs with
the default body; compat's ``ThreadingMixIn`` passes stdlib's own
``process_request_thread`` as the body (which calls ``finish_request``,
``handle_error`` and ``shutdown_request`` itself, as stdlib users expect to
override), and ``ForkingMixIn`` passes the sequence stdlib's
``process_request`` runs in the child (a body's False result makes the
job's result False: the child's exit status 1).  Either way the job ends
with the same early wake.

Who knows what.  A job reaches its server only through :class:`RequestHost`
(the stdlib-named hooks, the transport, the timeout policy, the handler) and
its :class:`RequestPath` (the lifetime watchdog, the loop's pause flag, the
loop's wake-up).  Operations on the request itself come from the
transport's :class:`~composable_server.interfaces.RequestOps`
(:data:`STREAM_REQUESTS`, :data:`DATAGRAM_REQUESTS`), so neither the job nor
the server asks what kind of request it holds.  Whether kernel timeouts are
safe is the handler's statement (a ``kernel_timeouts_safe`` attribute), not
a guess from its class.

Kept connections.  A handler factory that declares ``parks_connections =
True`` (``handlers.ParkingRequestHandler``) serves the messages a
connection has ready and returns a :class:`~composable_server.interfaces.Verdict`
as its ``verdict``.  On ``KEEP`` the job does not shut the connection down:
:meth:`RequestPath.give_back` hands the job itself to the serving loop
(a deque and the loop's wake-up, so any worker thread may call it), and the
loop parks it in :class:`Parking` until it is readable, then dispatches the
same job again.  The job keeps what belongs to the connection: the
transport's wrapped request (the TLS handshake ran once), the lifetime
watchdog entry, the verifier's admission (released once, at the end).  The
handler is instantiated afresh on every dispatch, so it owns nothing
between messages but its files, which it leaves in the path's
:class:`KeptFiles` (bounded; the job discards them when the connection
ends); it must not park while it holds buffered input (its ``rfile``
buffer, ``SSLSocket.pending()``): it serves that at once instead, since no
poll would ever report it.  On a ``SyncDispatcher`` the loop serves ready
kept connections itself, registered level-triggered once (see
:class:`Parking`, "Inline serving").  Where no loop can take the job back
(a forked child of ``ForkingDispatcher``, ``handle_request`` with no loop
ever run) the worker waits for the next message in place, up to the idle
budget; once a loop has left (shutdown, drain) a kept connection is closed.

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
import io
import math
import mmap
import os
import select
import struct
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from socket import MSG_DONTWAIT as _MSG_DONTWAIT
from socket import MSG_PEEK as _MSG_PEEK
from socket import SHUT_RDWR as _SHUT_RDWR
from socket import SO_RCVTIMEO as _SO_RCVTIMEO
from socket import SO_SNDTIMEO as _SO_SNDTIMEO
from socket import SOL_SOCKET as _SOL_SOCKET
from socket import socket as Socket
from typing import TYPE_CHECKING, Any, Final, Generic, Protocol, TypeAlias, TypeVar, cast, final

from ._watchdog import Watchdog, _Entry
from .interfaces import Budget, DatagramRequest, Outcome, RequestFinished, RequestStarted, TransportStarted, Verdict

if TYPE_CHECKING:
    from .interfaces import HandlerFactory, TimeoutPolicy, Transport
    from .observers import ObserverGroup

__all__ = (
    "DATAGRAM_REQUESTS",
    "DEFAULT_KEPT_FILES",
    "DEFAULT_MAX_PARKED",
    "STREAM_REQUESTS",
    "DatagramJob",
    "DatagramRequests",
    "KeptEntry",
    "KeptFiles",
    "Parking",
    "RequestHost",
    "RequestJob",
    "RequestPath",
    "StreamRequests",
    "parks_connections",
    "takes_kernel_timeouts",
)

# Invariant: a job both hands its request to the hooks and takes back what
# start_request returned (the client address too).
RequestT = TypeVar("RequestT")
AddressT = TypeVar("AddressT")

_POLLIN: Final = select.POLLIN
_KEEP: Final = Verdict.KEEP

DEFAULT_MAX_PARKED: Final = 1000
"""The most kept connections a serving loop parks at once; beyond it the
least recently used one is closed (gunicorn gthread: ``worker_connections``
1000; cheroot keeps 10, waitress 100)."""

# Where RequestPath.give_back sends a kept job.
_IN_PLACE: Final = 0  # no loop has run in this process: the worker waits itself
_TO_LOOP: Final = 1  # a serving loop takes kept jobs back
_CLOSED: Final = 2  # the loop left (shutdown, drain): close kept connections
_TO_LOOP_WAKE: Final = 3  # Parking.keep: parked, and the loop must look (over the cap, or a new poll set)

# Kept connections wait in an epoll set of their own: a worker re-arms its
# connection there itself (epoll_ctl from any thread reaches a waiting
# epoll_wait, epoll(7)), one-shot so that a readable connection is reported
# once, to one dispatch, and MOD re-arms it without a second system call.
_KEPT_EVENTS: Final = select.EPOLLIN | select.EPOLLONESHOT
_MAX_READY: Final = 256  # ready kept connections taken per wake-up (epoll_wait maxevents)

# How many times this process's ancestry forked since the import: a job
# given back in a forked child (ForkingDispatcher) finds a count different
# from its loop's, without a getpid() system call per message.
_forks = 0


def _count_fork() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_count_fork)

# Offsets in RequestPath's shared page.
_PAUSED: Final = 0
_FINISHES: Final = 1


# -- the request operations of each kind of transport ----------------------------


# Compiled once, in the serving process: struct.pack() would compile (and
# cache) the format in every forked child, and an lru_cache filled only in
# children would miss in each of them (~20 page faults per child together).
_TIMEVAL: Final = struct.Struct("@ll")
_recv: Final = Socket.recv  # a socket's own recv, whatever a subclass (TLS) makes of it


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
        ``MSG_PEEK | MSG_DONTWAIT``; for a TLS socket, nothing decrypted
        and waiting either), else -1 (data, EOF, or an error the handler
        should see).  Ask before any ``settimeout()``: with a socket
        timeout, Python waits for data before even that ``recv``."""
        try:
            # The socket's own recv: a TLS socket's refuses flags, and its
            # records may be buffered already (pending()).
            _recv(request, 1, _MSG_PEEK | _MSG_DONTWAIT)
        except BlockingIOError:
            ssl = sys.modules.get("ssl")  # no TLS socket exists without it
            if ssl is not None and isinstance(request, ssl.SSLSocket) and request.pending():
                return -1
            return request.fileno()
        except OSError:
            return -1  # a reset: let the handler see it
        return -1

    def limit_idle(self, request: Socket, seconds: float, *, kernel: bool) -> None:
        """``SO_RCVTIMEO``/``SO_SNDTIMEO`` (set once, no poll per call) when
        *kernel* allows and *request* is not a TLS socket (a plain or a
        :class:`~composable_server.proxy.ProxiedSocket`); else ``settimeout()``.

        A TLS socket keeps ``settimeout()``: on a blocking TLS socket
        ``_ssl`` retries a read or write that failed with ``EAGAIN`` (an
        expired kernel timeout reads as "want read"), so the limit would
        never end it.  The timeout has a price there: ``_ssl`` polls before
        every write and after every read that would block (about four
        system calls more per keep-alive request: ``tests.bench.switches
        --scenario tls-persistent``).
        """
        # Without ssl imported no TLS socket can exist, so a server without
        # TLS never imports it (import cost: ``ssl`` is ~10% of ``import
        # compat``).  The test and the timeval inline: this runs once per
        # connection, in a forked child too, where every function called
        # costs a copy-on-write fault or two (tests.bench.forkcost).
        ssl = sys.modules.get("ssl")
        if kernel and (ssl is None or not isinstance(request, ssl.SSLSocket)):
            whole = int(seconds)
            timeval = _TIMEVAL.pack(whole, int((seconds - whole) * 1_000_000))
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


def _unwrapped(handler: object) -> object:
    """*handler* without :func:`functools.partial` and ``__wrapped__`` layers."""
    while True:
        if isinstance(handler, functools.partial):
            handler = handler.func
        elif (wrapped := getattr(handler, "__wrapped__", None)) is not None:
            handler = wrapped
        else:
            return handler


def parks_connections(handler: object) -> bool:
    """True if *handler* declares ``parks_connections = True``: what it
    returns carries a :class:`~composable_server.interfaces.Verdict` as
    ``verdict``, and on ``KEEP`` the server parks the connection between
    messages.  A :func:`functools.partial`, or a wrapper that names what it
    wraps as ``__wrapped__`` (:func:`functools.wraps`), is judged by what it wraps."""
    return getattr(_unwrapped(handler), "parks_connections", False) is True


def client_speaks_first(handler: object) -> bool:
    """True if *handler* also declares ``client_speaks_first = True``: its
    protocol's client sends the first message (HTTP, line protocols), so a
    new connection that has sent nothing yet can wait in the loop's poll set
    like a kept one, instead of in the handler's first read.  Judged as
    :func:`parks_connections` is."""
    return getattr(_unwrapped(handler), "client_speaks_first", False) is True


LeanReply: TypeAlias = "Callable[[Socket, bytes, Any], None]"  # type: ignore[explicit-any]  # the address of any datagram family
"""Sends a reply whose ``sendto`` found the queue full (retry, then drop)."""


def datagram_responder(handler: object) -> tuple[Callable[[bytes, Any], bytes | None], LeanReply] | None:  # type: ignore[explicit-any]  # as above
    """``(handle_datagram, send_or_drop)`` if *handler* is a
    ``handlers.DatagramResponder`` (the lean datagram mode), else None: the
    serving loop then answers each datagram itself (``Server._lean_datagrams``)."""
    from .handlers import DatagramResponder, _send_or_drop  # here: the engine does not import the handlers

    if type(handler) is not DatagramResponder:
        return None
    return handler.handler.handle_datagram, _send_or_drop


def line_responder(handler: object) -> Callable[[Any, bytes, Any], bytes | None] | None:  # type: ignore[explicit-any]  # a socket and the address of any stream family
    """``serve_lines`` if *handler* is a ``handlers.LineResponder`` (the
    lean line mode), else None: the serving loop then serves the lines of
    its kept connections itself (``Server._inline_lines``)."""
    from .handlers import LineResponder  # here: the engine does not import the handlers

    if type(handler) is not LineResponder:
        return None
    return handler.serve_lines


# -- the files of kept connections --------------------------------------------------

DEFAULT_KEPT_FILES: Final = 256
"""The most kept connections whose ``rfile``/``wfile`` a server keeps for
their next message (:class:`KeptFiles`): at most ~2 MiB of 8 KiB read
buffers, however many connections are parked."""

KeptEntry = tuple[io.BufferedIOBase, io.BufferedIOBase, int, int]
"""``(rfile, wfile, rbufsize, wbufsize)``: what :class:`KeptFiles` holds for a connection."""


@final
class KeptFiles(OrderedDict[object, KeptEntry]):
    """The ``rfile``/``wfile`` that handlers of kept connections leave for the
    connection's next message, for at most *size* connections (least
    recently kept ones beyond it are closed): a mapping from the connection
    to its :data:`KeptEntry`, least recently kept first.

    A handler that parks connections (``handlers.ParkingRequestHandler``)
    is instantiated afresh for every message; building its files each time
    (a raw file, an 8 KiB ``BufferedReader``, a writer, and closing them)
    was most of what a parked message cost.  So on ``KEEP`` the handler
    leaves its files here (:meth:`put`, or as ``self[connection] = entry``
    and :meth:`evict`), and the next message's handler
    takes them back (``pop(connection, None)``, one C call).  They hold
    nothing then: a handler keeps a connection only once its ``rfile``
    buffer is empty.  Entries are keyed by the connection object, so files
    only ever serve the connection they were opened on; the job ends an
    entry when its connection ends (:meth:`discard`), whoever ends it (the
    handler, the idle budget, the cap, a drain).  The bound keeps memory
    flat however many connections are parked: a connection beyond it just
    gets new files at its next message.

    Each operation is one dictionary operation (atomic under the GIL): a
    connection is served by one thread at a time, and its entry is not here
    while it is served, so no entry is closed while in use.

    Args:
        size: the most connections whose files are kept (0: none).
    """

    __slots__ = ("size",)

    def __init__(self, size: int = DEFAULT_KEPT_FILES) -> None:
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        super().__init__()
        self.size = size

    def put(self, connection: object, entry: KeptEntry) -> None:
        """Keep *entry* for *connection*'s next message; close the least
        recently kept files beyond :attr:`size`."""
        self[connection] = entry
        if len(self) > self.size:
            self.evict()

    def evict(self) -> None:
        """Close the least recently kept files while more than :attr:`size` are kept."""
        while len(self) > self.size:
            try:
                _, oldest = self.popitem(last=False)
            except KeyError:  # another thread evicted it meanwhile
                return
            _close_files(oldest)

    def discard(self, connection: object) -> None:
        """*connection* ended: close its kept files, if any."""
        entry = self.pop(connection, None)
        if entry is not None:
            _close_files(entry)

    def close_all(self) -> None:
        """Close every kept file."""
        while self:
            try:
                _, entry = self.popitem(last=False)
            except KeyError:
                return
            _close_files(entry)

    def __repr__(self) -> str:
        return f"<KeptFiles {len(self)}/{self.size}>"


def _close_files(entry: KeptEntry) -> None:
    """Close the files of *entry* (not the connection under them)."""
    for file in entry[:2]:
        try:
            file.close()
        except (OSError, ValueError):
            pass  # a buffered wfile whose peer is gone: nothing is pending after a KEEP anyway


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
    def finish_request(self, request: RequestT, client_address: AddressT) -> object: ...
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

    __slots__ = (
        "_forks",
        "_parking",
        "_returns",
        "_shared",
        "_wake",
        "host",
        "kept_files",
        "observers",
        "plain_datagrams",
        "plain_finish",
        "traits",
        "watchdog",
    )

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
        # Where kept jobs go (see give_back): the serving loop's parking while
        # it runs, in the process (_forks: the fork count) that runs it.
        self._parking: Parking[RequestT, AddressT] | None = None
        self._returns = _IN_PLACE
        self._forks = _forks
        # (handler, takes_kernel_timeouts, parks, waits) of the handler the jobs
        # saw last (see handler_traits): asked once per handler, not once per
        # request (compat lets RequestHandlerClass change, so it is keyed by identity).
        self.traits: tuple[object, bool, bool, bool] = (None, False, False, False)
        # The host's finish_request is the engine's own, ``handler(request,
        # client_address, host)``: a kept connection's job calls the handler
        # itself (a frame less per message).  Set by the native Server.
        self.plain_finish = False
        # The host's datagrams need neither start_request nor
        # shutdown_request (a plain UDP or Unix datagram transport, the
        # engine's shutdown_request, no releasing verifier): a DatagramJob
        # skips both (three calls per datagram).  Set by the native Server.
        self.plain_datagrams = False
        # The files of kept connections between their messages (see
        # KeptFiles): the server's own, which its handlers find as
        # server.kept_files (compat makes a new path per reopen, not new files).
        kept_files = getattr(host, "kept_files", None)
        self.kept_files = kept_files if isinstance(kept_files, KeptFiles) else KeptFiles()

    def handler_traits(self, handler: object) -> tuple[object, bool, bool, bool]:
        """``(handler, takes_kernel_timeouts(handler), parks, waits)``,
        remembered for the last *handler* asked about (:attr:`traits`);
        *parks*: the handler parks connections (:func:`parks_connections`)
        and the transport's requests are connections; *waits*: it parks
        and its client speaks first (:func:`client_speaks_first`)."""
        traits = self.traits
        if traits[0] is not handler:
            parks = self.host.transport.request_ops.connections and parks_connections(handler)
            waits = parks and client_speaks_first(handler)
            traits = self.traits = (handler, takes_kernel_timeouts(handler), parks, waits)
        return traits

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

    def open_returns(self, parking: Parking[RequestT, AddressT]) -> None:
        """The serving loop starts: from now on kept jobs are parked in *parking*."""
        self._forks = _forks
        self._parking = parking
        self._returns = _TO_LOOP

    def close_returns(self) -> None:
        """The serving loop leaves: kept connections are closed from now on
        (the parking releases those it holds, :meth:`Parking.clear`)."""
        self._returns = _CLOSED
        self._parking = None

    def give_back(self, job: RequestJob[RequestT, AddressT]) -> int:
        """Park a kept *job* in the serving loop's poll set (any thread).

        The worker arms the descriptor itself (:meth:`Parking.keep`): no
        self-pipe, no loop iteration; the loop wakes only when the
        connection is readable again.

        Returns:
            ``_TO_LOOP``: the loop owns it now; ``_IN_PLACE``: no loop here
            (none ran, or this is a forked child: its parent's loop cannot
            poll for it), the caller waits for the next message itself;
            ``_CLOSED``: the loop left, the caller closes the connection.
        """
        if self._forks != _forks:
            return _IN_PLACE
        parking = self._parking
        if parking is None:
            return self._returns
        where = parking.keep(job)
        if where == _TO_LOOP_WAKE:
            self._wake()  # the loop closes the least recently used one, or polls the new set
            return _TO_LOOP
        return where

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
            owns all of that (compat's ``process_request_thread``); if it
            returns False, so does :meth:`run`.

    Attributes:
        cut: set by :meth:`abort`: the server cut this connection (drain
            deadline, lifetime budget) and has reported it, so the handler's
            resulting ``BrokenPipe``/EOF errors are not reported again.
    """

    __slots__ = (
        "_began",
        "_body",
        "_cut_by",
        "_entry",
        "_error",
        "_parked_in",
        "_parked_until",
        "_parks",
        "_path",
        "_started",
        "_transferred",
        "client_address",
        "cut",
        "partial",
        "request",
    )

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
        self._started = False  # start_request ran: the connection is served (again)
        self._parks = False  # the handler returns verdicts (parks_connections)
        self._entry: _Entry | None = None  # the lifetime watchdog's entry
        self._cut_by: Budget | None = None
        self._error: Exception | None = None
        # While kept: the parking whose poll set holds the descriptor, and
        # when the idle budget closes it there (time.monotonic()).
        self._parked_in: Parking[RequestT, AddressT] | None = None
        self._parked_until = 0.0
        self._began = 0.0  # with observers: when the connection's first dispatch began (perf_counter)
        self._transferred: tuple[int | None, int | None] = _UNKNOWN  # byte counts, when observed
        # While kept and served by the loop's lean line mode (Parking's *lines*): the partial line read.
        self.partial = b""

    def run(self) -> bool:
        """Serve the request (see the class); True if the handler returned.

        A connection kept by its handler (``Verdict.KEEP``) is given back to
        the serving loop instead of being shut down; the loop runs this
        same job again when the connection is readable.
        """
        observers = self._path.observers
        if observers is not None:
            return self._run_observed(observers)
        return self._serve(None) is not False

    def _run_observed(self, observers: ObserverGroup) -> bool:
        """:meth:`run`, telling *observers* when it starts and how it ends."""
        client_address = self.client_address
        transport = self._path.host.transport
        transport_name = type(transport).__name__
        tls = _does_tls(transport)

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

        # One request_started and one request_finished per connection, however
        # many times it was parked between messages (README "Observing a server").
        if not self._started:
            observers.request_started(RequestStarted(client_address))
            self._began = time.perf_counter()
        began = self._began  # read now: once kept, another worker may own the job
        ok: bool | None = False
        try:
            ok = self._serve(start)
            return ok is not False
        finally:
            if ok is not None:  # None: kept, parked in the loop; its end is reported then
                observers.request_finished(self._finished_event(ok, time.perf_counter() - began))

    def _finished_event(self, ok: bool, duration: float) -> RequestFinished:
        error = self._error
        outcome: Outcome
        name: str | None = None
        budget: Budget | None = None
        if self.cut:
            outcome, budget = ("drain", None) if self._cut_by is None else ("budget", self._cut_by)
        elif isinstance(error, _StartFailed):
            outcome, name = "start_failed", type(error.error).__name__
        elif ok:
            outcome = "ok"
        elif error is None:  # late admission: the verifier refused it after start_request
            outcome = "refused"
        else:
            name = type(error).__name__
            if isinstance(error, TimeoutError):
                outcome, budget = "budget", "idle"
            elif isinstance(error, ConnectionError):
                outcome = "client_gone"
            else:
                outcome = "handler_error"
        bytes_in, bytes_out = self._transferred
        return RequestFinished(self.client_address, duration, outcome, name, budget, bytes_in, bytes_out)

    def _serve(self, start: Callable[[RequestT, AddressT], tuple[RequestT, AddressT]] | None) -> bool | None:
        """The default body (or *body*); True if the handler returned, None
        if it kept the connection and the loop owns the job now.

        Args:
            start: what prepares the request instead of the transport's
                ``start_request`` (the observed path's timed one); None: the
                transport's, and nobody observes.
        """
        path = self._path
        body = self._body
        if body is not None:
            try:
                return body(self.request, self.client_address) is not False
            finally:
                if path.kept_files:  # a parking handler that the body does not park (compat)
                    path.kept_files.discard(self.request)
                path.finished()
        host = path.host
        kept = False
        try:
            if self._started:
                request = self.request
            else:
                # Once per connection, inline (one frame less for every
                # request): the lifetime budget, start_request (the TLS
                # handshake, the PROXY header: the client address may
                # change), the idle budget.
                self._started = True
                ops = host.transport.request_ops
                budget = host.timeout_policy.budget if ops.connections else None
                if budget is not None and budget.lifetime is not None:
                    self._entry = path.watchdog.add(budget.lifetime, self._expire)
                # TLS handshakes and PROXY headers: here, in the worker, never in the accept loop.
                request, self.client_address = (host.transport.start_request if start is None else start)(
                    self.request, self.client_address
                )
                self.request = request
                handler = host.handler
                traits = path.traits
                if traits[0] is not handler:
                    traits = path.handler_traits(handler)
                # Not with a first-byte budget: a connection dispatched then
                # has spoken (Parking.park).  Asked before the idle budget:
                # with a socket timeout (settimeout) even a MSG_DONTWAIT recv
                # first waits for data.
                unspoken = (
                    traits[3]
                    and (budget is None or budget.first_byte is None)
                    and path._parking is not None
                    and ops.silent_fd(request) >= 0
                )
                if budget is not None and budget.idle is not None:
                    ops.limit_idle(request, budget.idle, kernel=traits[1])
                self._parks = traits[2]
                if host.transport.late_admission and not host.verify_request(request, self.client_address):
                    return False  # refused (the verifier logs it): released below, unserved
                if unspoken:
                    # Its client speaks first and has said nothing yet: it
                    # waits among the kept connections (the idle budget, the
                    # cap), not in the handler's first read, which would
                    # hold this worker, or the whole loop on a SyncDispatcher.
                    where = path.give_back(self)
                    if where == _TO_LOOP:
                        kept = True
                        return None
                    if where == _CLOSED:
                        return True  # the loop is leaving: closed as the kept ones are
            while True:
                if path.plain_finish:
                    served = host.handler(request, self.client_address, host)
                else:
                    served = host.finish_request(request, self.client_address)
                if not self._parks or self.cut or getattr(served, "verdict", None) is not _KEEP:
                    return True
                parking = path._parking
                if parking is not None and parking._serving is self:
                    # Served inline by the loop (Parking.ready): still
                    # registered, level-triggered, and back in the kept set
                    # here (give_back and Parking.keep, inlined: once per
                    # message).  The loop looks at the cap before it polls.
                    parking._serving = None
                    self._parked_until = parking._serving_until
                    # Only connection requests are kept: sockets.  (No typing.cast: a call per message.)
                    parking._kept[request.fileno()] = self  # type: ignore[attr-defined]  # a socket, as above
                    kept = True
                    return None
                where = path.give_back(self)
                if where == _TO_LOOP:
                    # The loop owns the job now (another worker may run it
                    # already): touch nothing of it from here on.
                    kept = True
                    return None
                if where == _CLOSED or not self._linger():
                    return True
        except Exception as exc:
            if start is not None and self._error is None:  # observed (see _run_observed)
                self._error = exc
            if not self.cut:
                host.handle_error(self.request, self.client_address)
            return False
        finally:
            if not kept:
                if start is not None:  # observed: the byte counts, before the socket closes
                    self._transferred = _transferred(path, self.request)
                self.release()

    def _linger(self) -> bool:
        """No loop to park in: wait here for the next message, up to the idle
        budget (reported as ``"idle"`` when it runs out).  True: readable."""
        policy = self._path.host.timeout_policy
        budget = policy.budget
        idle = None if budget is None else budget.idle
        poller = select.poll()
        # Only connection requests are kept (run checks request_ops.connections): sockets.
        poller.register(cast(Socket, self.request).fileno(), _POLLIN)
        if poller.poll(None if idle is None else idle * 1000.0):
            return True
        policy.budget_exceeded(self.client_address, "idle")
        return False

    def release(self) -> None:
        """End the connection: cancel its lifetime entry, ``shutdown_request``
        (and the verifier's release), count it finished."""
        path = self._path
        entry, self._entry = self._entry, None
        if entry is not None:
            path.watchdog.cancel(entry)
        if self._parks:
            path.kept_files.discard(self.request)
            parked_in, self._parked_in = self._parked_in, None
            if parked_in is not None:
                # Only connection requests are kept: sockets.
                parked_in.forget(cast(Socket, self.request).fileno())
        try:
            path.host.shutdown_request(self.request)
        finally:
            path.finished()

    def _expire(self) -> None:
        # Runs on the watchdog thread: the lifetime budget ran out.
        self._cut_by = "lifetime"
        self.abort()
        self._path.host.timeout_policy.budget_exceeded(self.client_address, "lifetime")

    def close(self, message: bytes = b"") -> None:
        """Release the request unserved, sending *message* first (best effort)."""
        path = self._path
        host = path.host
        entry, self._entry = self._entry, None
        if entry is not None:  # a kept connection, refused on its way back
            path.watchdog.cancel(entry)
        if self._parks:
            path.kept_files.discard(self.request)
            parked_in, self._parked_in = self._parked_in, None
            if parked_in is not None:
                parked_in.forget(cast(Socket, self.request).fileno())
        if message:
            host.transport.request_ops.reject(self.request, message, self.client_address)
        host.close_request(self.request)

    def abort(self) -> None:
        """Cut the connection (any thread, any time, repeatable)."""
        self.cut = True
        self._path.host.transport.request_ops.abort(self.request)

    def __repr__(self) -> str:
        return f"<Job {self.client_address!r}>"


_UNKNOWN: Final = (None, None)


def _does_tls(transport: object) -> bool:
    """True if *transport* or a layer it wraps (``inner``) has a TLS ``context``."""
    while transport is not None:
        if hasattr(transport, "context"):
            return True
        transport = getattr(transport, "inner", None)
    return False


def _transferred(path: RequestPath[RequestT, AddressT], request: object) -> tuple[int | None, int | None]:
    """The request's byte counts if an observer of *path* wants them."""
    observers = path.observers
    if observers is None or not observers.wants_bytes:
        return _UNKNOWN
    from .observers import transferred  # loaded with the observers already

    return transferred(request)


@final
class _StartFailed(Exception):
    """What a job records when ``start_request`` raised (*error*)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


# -- the job of a datagram ------------------------------------------------------------


@final
class DatagramJob(Generic[RequestT, AddressT]):
    """The job of a request that is no connection (a datagram: complete on
    arrival, sharing the listening socket), on a server without observers.

    What :class:`RequestJob` does for such a request, in one call instead of
    six: no budget applies (``request_ops.connections`` is False), nothing
    is parked or kept, nothing is verified late.  So: ``start_request``,
    ``finish_request``, ``handle_error`` (unless cut), ``shutdown_request``,
    and the finish count.  The server chooses it (``process_request``) for
    a transport whose requests are not connections and that has no
    ``late_admission``; with observers every request takes
    :class:`RequestJob`, which reports its start and end.

    Args:
        path: the server's :class:`RequestPath`.
        request, client_address: from the acceptor.

    Attributes:
        cut: set by :meth:`abort` (the drain deadline): the handler's errors
            are not reported.
    """

    __slots__ = ("_path", "client_address", "cut", "request")

    def __init__(self, path: RequestPath[RequestT, AddressT], request: RequestT, client_address: AddressT) -> None:
        self._path = path
        self.request = request
        self.client_address = client_address
        self.cut = False

    def run(self) -> bool:
        """Serve the datagram; True if the handler returned."""
        path = self._path
        host = path.host
        plain = path.plain_datagrams  # nothing to start or shut down: see RequestPath.plain_datagrams
        try:
            if not plain:
                self.request, self.client_address = host.transport.start_request(self.request, self.client_address)
            host.finish_request(self.request, self.client_address)
            return True
        except Exception:
            if not self.cut:
                host.handle_error(self.request, self.client_address)
            return False
        finally:
            try:
                if not plain:
                    host.shutdown_request(self.request)
            finally:
                path.finished()

    def close(self, message: bytes = b"") -> None:
        """Release the request unserved, sending *message* first (best effort)."""
        host = self._path.host
        if message:
            host.transport.request_ops.reject(self.request, message, self.client_address)
        host.close_request(self.request)

    def abort(self) -> None:
        """Mark the job cut (nothing to shut down: the socket is the listener's)."""
        self.cut = True
        self._path.host.transport.request_ops.abort(self.request)

    def __repr__(self) -> str:
        return f"<DatagramJob {self.client_address!r}>"


# -- parking: the first-byte budget and kept connections -------------------------


@final
class Parking(Generic[RequestT, AddressT]):
    """Connections waiting in a poll set, not in a worker: new ones still
    silent (the first-byte budget), and kept ones between two messages.

    They wait in a poll set (the serving loop's, or ``handle_request``'s own),
    so a crowd of clients that connect and say nothing, or keep their
    connection open and idle, occupies no thread.  A silent new connection
    is handed to *dispatch* when it becomes readable, or shut down at its
    first-byte deadline (the only implementation of that budget).  A kept
    connection (its :class:`RequestJob`, see :meth:`keep`) is handed to
    *redispatch* when readable, closed after the idle budget (``"idle"``),
    and, beyond *max_kept*, the least recently parked one is closed
    (``"parked"``).  Both go through ``TimeoutPolicy.budget_exceeded``, and
    every connection closed here ends in one ``request_finished`` for the
    observers (``budget`` with its budget, or ``drain`` at :meth:`clear`).

    Theory of operation.  New silent connections are parked and woken by
    the serving loop alone: a heap of ``(deadline, fd)`` (an entry is stale
    once its descriptor is not parked any more) and the loop's poll set.
    Kept connections are parked by the worker that served their last
    message, which arms the descriptor in an epoll set of their own,
    one-shot (:meth:`keep`); that set's descriptor sits in the loop's poll
    set, so the loop wakes when any kept connection is readable and takes
    every ready one in one ``epoll_wait`` (:meth:`ready`).  No self-pipe
    write, no loop iteration, no allocation per message beyond the epoll
    call's result.  ``_kept`` (fd -> job, under ``_lock``) is in parking
    order, which is both least-recently-used order and, the idle budget
    being one length, deadline order: the first entry is the next to
    expire and the first to evict, and no heap is needed.  Only the loop
    removes kept entries (ready, expire, clear), so an event the loop
    holds always names a descriptor still parked, never a reused number.

    Args:
        host: the server (its transport's request operations, its timeout policy).
        poller: the poll set to register parked descriptors with.
        dispatch: called with ``(request, client_address)`` of a parked
            connection that became readable (the server's guarded
            ``process_request``).
        redispatch: called with the job of a kept connection that became
            readable (the server's guarded ``dispatcher.dispatch``); None:
            nothing is kept here.
        max_kept: the most kept connections parked at once.
        observers: told of each connection closed here.
        inline: the dispatcher runs every job in the loop's thread before it
            returns (``SyncDispatcher``): kept connections are then
            registered level-triggered, once, and served by :meth:`ready`
            itself, every ready one per wake-up, with no ``epoll_ctl`` per
            message (see "Inline serving" below).
        lines: with *inline*, the lean line mode's serving
            (``handlers.LineResponder.serve_lines``): a ready kept
            connection is served by ``lines(socket, job.partial,
            client_address)`` instead of its job's handler call; None (what
            it returns) closes it, else it is the partial line kept on the
            job for the next read.

    Inline serving.  With a pool, a ready kept connection goes to a worker
    while the loop polls on, so its registration must be one-shot (else
    every poll reports it again until the worker has read the message) and
    re-armed after each message.  When the loop serves it itself, nothing
    polls meanwhile: the registration stays level-triggered from the first
    message to the close, a message that comes back ``KEEP`` from
    :meth:`ready` is only put back in ``_kept`` (:meth:`keep` sees it is
    :attr:`_serving`), and all of it happens on the loop's thread, so
    ``_kept`` needs no lock.  A closed connection's registration is removed
    before its socket closes (:meth:`forget`, from ``RequestJob.release``),
    so a stale one can never report a reused descriptor.
    """

    __slots__ = (
        "_closed",
        "_dispatch",
        "_entries",
        "_epoll",
        "_epoll_fd",
        "_heap",
        "_host",
        "_inline",
        "_kept",
        "_lines",
        "_lock",
        "_max_kept",
        "_observers",
        "_poller",
        "_redispatch",
        "_serving",
        "_serving_until",
    )

    def __init__(
        self,
        host: RequestHost[RequestT, AddressT],
        poller: select.poll,
        dispatch: Callable[[RequestT, AddressT], object],
        redispatch: Callable[[RequestJob[RequestT, AddressT]], object] | None = None,
        max_kept: int = DEFAULT_MAX_PARKED,
        observers: ObserverGroup | None = None,
        *,
        inline: bool = False,
        lines: Callable[[RequestT, bytes, AddressT], bytes | None] | None = None,
    ) -> None:
        self._host = host
        self._inline = inline
        self._lines = lines if inline else None
        # Inline: the kept job ready() is serving now, and the idle deadline
        # of the kept connections it serves (taken once per wake-up).
        self._serving: RequestJob[RequestT, AddressT] | None = None
        self._serving_until = math.inf
        self._observers = observers
        self._poller = poller
        self._dispatch = dispatch
        self._redispatch = redispatch
        self._max_kept = max_kept
        self._entries: dict[int, tuple[RequestT, AddressT, float]] = {}
        self._heap: list[tuple[float, int]] = []
        # Kept connections, in parking order (see the class).
        self._kept: dict[int, RequestJob[RequestT, AddressT]] = {}
        self._lock = threading.Lock()
        self._closed = False
        # Made by the first keep(): a server that never keeps a connection
        # holds no descriptor more than before parking existed.
        self._epoll: select.epoll | None = None
        self._epoll_fd = -1

    def __bool__(self) -> bool:
        return bool(self._entries) or bool(self._kept)

    def __len__(self) -> int:
        return len(self._entries) + len(self._kept)

    @property
    def kept(self) -> int:
        """How many kept connections are parked."""
        return len(self._kept)

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

    def keep(self, job: RequestJob[RequestT, AddressT]) -> int:
        """Park a kept connection until it is readable (then *redispatch*
        it), its idle budget runs out, or it is the least recently used one
        when *max_kept* are parked.  Called by the worker that served it
        (:meth:`RequestPath.give_back`), in any thread.

        The handler checked its buffered input before it said KEEP, so
        readiness of the descriptor is all there is to wait for.

        Returns:
            ``_TO_LOOP``: parked, the parking owns the job now;
            ``_TO_LOOP_WAKE``: the same, and the loop must look: more than
            *max_kept* are parked (it closes the least recently used), or
            this was the first kept connection (its poll set is new);
            ``_CLOSED``: not parked (the loop left, the descriptor was
            closed, or nothing is kept here): the caller releases the job;
            ``_IN_PLACE``: the poll set refused it (``epoll_ctl`` failed):
            the caller waits for the next message itself.
        """
        # Only connection requests are kept (RequestJob checks
        # request_ops.connections): sockets.  (No typing.cast: a call per message.)
        fd: int = job.request.fileno()  # type: ignore[attr-defined]  # a socket, as above
        if job is self._serving:
            # Served inline by ready(), on the loop's thread: its level-triggered
            # registration stays; the loop looks at the cap after ready().
            self._serving = None
            job._parked_until = self._serving_until
            self._kept[fd] = job
            return _TO_LOOP
        if fd < 0 or self._redispatch is None:
            return _CLOSED
        budget = self._host.timeout_policy.budget
        idle = None if budget is None else budget.idle
        job._parked_until = math.inf if idle is None else time.monotonic() + idle
        with self._lock:
            if self._closed:
                return _CLOSED
            epoll = self._epoll
            new_set = epoll is None
            if epoll is None:
                try:
                    epoll = self._epoll = select.epoll()
                except OSError:
                    return _IN_PLACE  # no descriptor for it (EMFILE): wait in place
                self._epoll_fd = epoll.fileno()
                # Taken into account at the loop's next poll(): the caller wakes it.
                self._poller.register(self._epoll_fd, _POLLIN)
            kept = self._kept
            kept[fd] = job
            # Armed under the lock, after the entry exists: the loop finds
            # the job for any event, and cannot close it meanwhile.
            try:
                if job._parked_in is not self:
                    epoll.register(fd, select.EPOLLIN if self._inline else _KEPT_EVENTS)
                    job._parked_in = self
                elif not self._inline:  # inline: still registered, level-triggered
                    epoll.modify(fd, _KEPT_EVENTS)
            except OSError:
                del kept[fd]
                return _IN_PLACE
            if self._inline:
                return _TO_LOOP  # kept by the loop's own thread, which looks at both before it polls again
            return _TO_LOOP_WAKE if new_set or len(kept) > self._max_kept else _TO_LOOP

    def ready(self, fd: int) -> bool:
        """*fd* became readable: dispatch its parked connection (for the
        kept connections' set: every one that is ready).  False if *fd* is
        not parked here."""
        if fd == self._epoll_fd:
            # Only the loop removes kept entries, and a ready one is parked:
            # no lock needed for the pops (each is atomic).
            pop = self._kept.pop
            redispatch = self._redispatch
            epoll = self._epoll
            if redispatch is None or epoll is None:  # no kept connections here (then _epoll_fd is -1)
                return False
            if self._inline:
                lines = self._lines
                if lines is None:
                    self._serve_ready(epoll.poll(0, _MAX_READY))
                    return True
                # The lean line mode: *lines* serves each ready kept
                # connection here, with the outcomes of the job's (an
                # exception goes to handle_error unless the connection was
                # cut, and closes it; a cut one is closed).
                budget = self._host.timeout_policy.budget
                idle = None if budget is None else budget.idle
                until = math.inf if idle is None else time.monotonic() + idle
                kept = self._kept
                for ready_fd, _ in epoll.poll(0, _MAX_READY):
                    job = pop(ready_fd, None)
                    if job is None:
                        continue
                    try:
                        rest = lines(job.request, job.partial, job.client_address)
                    except Exception:
                        if not job.cut:
                            self._host.handle_error(job.request, job.client_address)
                        job.release()
                        continue
                    except BaseException:
                        job.release()
                        raise
                    if rest is None or job.cut:
                        job.release()
                    else:
                        job.partial = rest
                        job._parked_until = until
                        kept[ready_fd] = job
                return True
            for ready_fd, _ in epoll.poll(0, _MAX_READY):
                job = pop(ready_fd, None)
                if job is not None:
                    redispatch(job)
            return True
        entry = self._entries.pop(fd, None)
        if entry is None:
            return False
        self._poller.unregister(fd)
        self._dispatch(entry[0], entry[1])
        return True

    def _serve_ready(self, events: list[tuple[int, int]]) -> None:
        """Inline: serve every ready kept connection here, one after the other."""
        budget = self._host.timeout_policy.budget
        idle = None if budget is None else budget.idle
        self._serving_until = math.inf if idle is None else time.monotonic() + idle
        pop = self._kept.pop
        host = self._host
        observed = self._observers is not None
        for ready_fd, _ in events:
            job = pop(ready_fd, None)
            if job is None:
                continue
            self._serving = job
            # The dispatcher's work, done here (it would run the job in this
            # thread too), guarded as the server's redispatch; without
            # observers, run() is _serve(None) (a frame less per message).
            try:
                if observed:
                    job.run()
                else:
                    job._serve(None)
            except Exception:
                host.handle_error(job.request, job.client_address)
                job.release()
            except BaseException:
                job.release()
                raise
            finally:
                self._serving = None

    def forget(self, fd: int) -> None:
        """*fd*, parked here before, is about to close: remove its registration
        (a level-triggered one would report a reused descriptor number)."""
        epoll = self._epoll
        if epoll is not None:
            try:
                epoll.unregister(fd)
            except (OSError, ValueError):  # not registered (any more), or the set is closed
                pass

    def next_deadline(self) -> float | None:
        """The earliest deadline of a parked connection (None: none parked
        with a deadline; more kept than the cap: now)."""
        heap, entries = self._heap, self._entries
        deadline = None
        while heap:
            first, fd = heap[0]
            entry = entries.get(fd)
            if entry is not None and entry[2] == first:
                deadline = first
                break
            heapq.heappop(heap)  # stale: that connection was dispatched
        kept = self._kept
        if kept:
            if self._inline:  # only the loop's thread touches _kept
                if len(kept) > self._max_kept:
                    return time.monotonic()
                oldest = next(iter(kept.values()), None)
            else:
                with self._lock:
                    if len(kept) > self._max_kept:
                        return time.monotonic()
                    oldest = next(iter(kept.values()), None)
            if oldest is not None and oldest._parked_until != math.inf:
                if deadline is None or oldest._parked_until < deadline:
                    deadline = oldest._parked_until
        return deadline

    def expire(self, now: float) -> None:
        """Shut down every connection whose deadline is past *now*, and the
        least recently used kept ones beyond the cap; report each."""
        host = self._host
        policy = host.timeout_policy
        observers = self._observers
        heap, entries = self._heap, self._entries
        while heap and heap[0][0] <= now:
            deadline, fd = heapq.heappop(heap)
            entry = entries.get(fd)
            if entry is None or entry[2] != deadline:
                continue  # stale: that connection was dispatched
            del entries[fd]
            self._poller.unregister(fd)
            request, client_address, _ = entry
            host.shutdown_request(request)
            policy.budget_exceeded(client_address, "first_byte")
            if observers is not None:
                budget = policy.budget
                waited = 0.0 if budget is None else budget.first_byte or 0.0
                observers.request_finished(
                    RequestFinished(client_address, waited + max(0.0, now - deadline), "budget", None, "first_byte")
                )
        if not self._kept:
            return
        closing: list[tuple[int, RequestJob[RequestT, AddressT], Budget]] = []
        with self._lock:
            kept = self._kept
            over = len(kept) - self._max_kept
            for fd, job in kept.items():
                if over > 0:
                    over -= 1
                    closing.append((fd, job, "parked"))
                elif job._parked_until <= now:
                    closing.append((fd, job, "idle"))
                else:
                    break
            epoll = cast(select.epoll, self._epoll)
            for fd, job, _ in closing:
                del kept[fd]
                job._parked_in = None
                try:
                    epoll.unregister(fd)
                except OSError:
                    pass  # closed under us already: nothing left to remove
        for _, job, which in closing:
            # Reported before the close, so whoever sees the EOF sees the count too.
            policy.budget_exceeded(job.client_address, which)
            self._closed_kept(job, "budget", which)

    def _closed_kept(self, job: RequestJob[RequestT, AddressT], outcome: Outcome, budget: Budget | None) -> None:
        """Release a kept *job* closed while parked; its one ``request_finished``."""
        try:
            job.release()
        finally:
            if self._observers is not None:
                duration = time.perf_counter() - job._began
                self._observers.request_finished(RequestFinished(job.client_address, duration, outcome, None, budget))

    def settle(self) -> None:
        """Wait until nothing is parked, dispatching or expiring each
        connection (``handle_request``, which has no loop to return to)."""
        while (deadline := self.next_deadline()) is not None:
            wait_ms = max(0.0, (deadline - time.monotonic()) * 1000.0)
            for fd, _ in self._poller.poll(wait_ms):
                self.ready(fd)
            self.expire(time.monotonic())

    def clear(self) -> None:
        """Shut down every parked connection (the loop is leaving): new ones
        never sent a byte and kept ones are between messages, so closing
        them loses nothing.  Kept connections given back later are refused
        (:meth:`keep` returns ``_CLOSED``)."""
        entries, self._entries = self._entries, {}
        with self._lock:
            self._closed = True
            kept, self._kept = self._kept, {}
            epoll, self._epoll = self._epoll, None
        self._heap.clear()
        for fd, (request, client_address, _) in entries.items():
            self._poller.unregister(fd)
            self._host.shutdown_request(request)
            if self._observers is not None:
                self._observers.request_finished(RequestFinished(client_address, 0.0, "drain"))
        if epoll is not None:
            self._poller.unregister(self._epoll_fd)
            epoll.close()
        for job in kept.values():
            job._parked_in = None
            self._closed_kept(job, "drain", None)
