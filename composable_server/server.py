"""The engine: one :class:`Server` class, generic over request and address.

Theory of operation
-------------------

A server holds one component per role (transport, acceptor, verifier,
dispatcher, error policy, timeout policy, accept-error policy) and a handler
factory.  Its methods carry the stdlib ``BaseServer`` names (``get_request``,
``verify_request``, ``process_request``, ``finish_request``,
``handle_error``, ...) and by default each delegates to its component, so
the request pipeline is::

    serve_forever / handle_request
      -> get_request()            acceptor.accept(transport)
      -> verify_request()         verifier.verify(...)        False: shutdown_request()
      -> park                     first-byte budget: silent connections wait here
      -> process_request()        dispatcher.dispatch(job)
           the job's life (budget, start_request, finish_request,
           handle_error, shutdown_request): composable_server._request

The compat classes are subclasses that only build the components from
stdlib-style class attributes; a user subclass may override any of these
methods, as with stdlib.

This module holds the loop and the lifecycle only.  It never looks at a
request: what happens to one (parking, budgets, rejection, abort) comes from
``composable_server._request`` and the transport's ``request_ops``, and
whether the listener is non-blocking from ``transport.nonblocking``.

Waking the loop.  ``serve_forever`` polls two descriptors: the transport's
and a self-pipe (:class:`~composable_server._socketutil.Waker`).
``shutdown()`` sets a flag and writes to the pipe, so the loop stops within
microseconds instead of after ``poll_interval`` (stdlib bpo-12463 / gh-81707).
``poll_interval`` remains only as the cadence of ``service_actions()``.

Silent connections.  With a first-byte budget, a new connection that has sent
nothing yet is *parked* in the loop's poll set instead of being dispatched
(:class:`~composable_server._request.Parking`): it costs no worker until it
speaks, and is closed at its deadline.  A crowd of idle clients cannot
starve the pool.  ``handle_request`` parks the same way, in a poll set of
its own, and returns once the connection spoke (and was dispatched) or expired.

Kept connections.  A handler that parks connections
(``handlers.ParkingRequestHandler``) answers the messages a connection has
ready and says KEEP: its job comes back to the loop (the worker arms its
descriptor in the kept connections' epoll set, which sits in the loop's
poll set) and waits there until the next message, then is dispatched again
(on a ``SyncDispatcher``, served by the loop itself); idle too long (the idle budget) or least recently used beyond
``max_parked``, it is closed.  A new connection of such a handler whose
client speaks first (``client_speaks_first``) and that has sent nothing
yet joins them at once, unread, instead of waiting in the handler's first
read.  Leaving the loop (shutdown, drain) closes every parked connection
at once; busy ones finish their message and close.

Lines inline.  The same for a kept connection of a lean line handler
(``handlers.LineResponder``) on a plain TCP or Unix stream transport: the
loop calls its ``serve_lines`` for each ready one (``_inline_lines``), with
no job run per message.

Datagrams inline.  On a ``SyncDispatcher`` a datagram of a plain UDP or
Unix datagram transport is served by the loop in one function
(``_inline_datagrams``): ``recvfrom``, the verifier, the handler, with no
job or dispatch in between; a lean handler's reply
(``handlers.DatagramResponder``) is sent there too.  A subclass that
overrides a hook on the request path, observers, or another dispatcher
take the job path.

Accept errors.  An ``OSError`` from ``get_request()`` goes to the
AcceptErrorPolicy, which may ask for a pause (out of descriptors, the
listening socket stays readable and retrying at once would spin).  While
paused the loop polls only its waker; a finishing request wakes it early,
since that freed a descriptor (``RequestPath.finished``, also from a forked
child).

Shutdown states.  A ``shutdown()`` request is consumed by the
``serve_forever`` it stops: the running one, or, when none runs yet, the next
one, which then returns at once (a server thread that starts late cannot
miss it).  ``shutdown()`` waits for a running loop to finish, returns at
once otherwise, and raises :class:`ServerStateError` when called from the
serving thread itself, where waiting would deadlock.
"""

from __future__ import annotations

import errno
import select
import sys
import threading
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Final, Generic, Self, TypeVar, cast, final

import attrs

from ._allowall import AllowAll
from ._request import (
    DEFAULT_KEPT_FILES,
    DEFAULT_MAX_PARKED,
    DatagramJob,
    KeptFiles,
    Parking,
    RequestJob,
    RequestPath,
    datagram_responder,
    line_responder,
)
from ._socketutil import Waker
from .dispatchers import SyncDispatcher
from .exceptions import ServerClosedError, ServerError, ServerStateError
from .interfaces import (
    DatagramRequest,
    AcceptErrorPolicy,
    AcceptFailed,
    ConnectionAccepted,
    ConnectionRefused,
    DrainFinished,
    DrainStarted,
    Acceptor,
    Dispatcher,
    ErrorPolicy,
    HandlerFactory,
    TimeoutPolicy,
    Observer,
    Transport,
    Verifier,
)
from .observers import ObserverGroup, verifier_refusal
from .policies import AcceptBackoff, ConnectionTimeouts, PrintTraceback

__all__ = ("DrainReport", "Server")

RequestT = TypeVar("RequestT")
AddressT = TypeVar("AddressT")

# Connections accepted per wake-up at most (nginx's multi_accept takes all;
# a bound keeps shutdown and parked connections responsive under a flood).
_ACCEPT_BATCH: Final = 32

# A loop whose probe for a second request found none (EAGAIN) serves this
# many wake-ups with one accept (recvfrom) each before probing again: at low
# load a failed non-blocking accept or recvfrom (a BlockingIOError raised
# through three frames, its message formatted) costs about as much as
# serving a datagram, and poll reports the next one anyway; once requests
# queue up, the next probe finds one and the loop drains up to _ACCEPT_BATCH
# per wake-up again (libuv drains up to 32 per wake-up too, in C, where
# EAGAIN costs nothing).  For a connection per request the failed probe was
# ~10k of native-sync's ~105k instructions per connection (stdlib's blocking
# listener accepts once: 95k; tests.bench.callgrind_tcp --mode cpr); a loop
# that forks per connection (ForkingDispatcher) pays it in copy-on-write
# faults too: the exception writes a dozen pages (tests.bench.forkcost).
_PROBE_BACKOFF: Final = 8

# The hooks the inline datagram loop (Server._inline_datagrams) does the work
# of: a subclass that overrides one gets the job path.
_INLINE_HOOKS: Final = ("get_request", "verify_request", "process_request", "finish_request", "shutdown_request")

_POLLIN = select.POLLIN
_POLL_DEAD = select.POLLNVAL


def _plain_datagram_transport(transport: object) -> bool:
    """True if *transport* is a plain ``UDPTransport`` or
    ``UnixDatagramTransport``: its datagrams need neither ``start_request``
    nor ``shutdown_request``, and its socket is read with ``recvfrom``."""
    from .transports import UDPTransport, UnixDatagramTransport  # here: loaded already with such a transport

    return type(transport) in (UDPTransport, UnixDatagramTransport)


def _error_name(exc: OSError) -> str:
    """``OSError(EMFILE)``: the class and the errno's name."""
    code = errno.errorcode.get(exc.errno or 0)
    return f"{type(exc).__name__}({code})" if code else type(exc).__name__


def _rejected(dispatcher: object) -> object:
    """The dispatcher's count of rejected jobs (its ``rejected``, or its
    ``statistics().rejected``); None if it keeps none."""
    rejected = getattr(dispatcher, "rejected", None)
    if rejected is None and callable(statistics := getattr(dispatcher, "statistics", None)):
        rejected = getattr(statistics(), "rejected", None)
    return rejected


@final
@attrs.frozen
class DrainReport:
    """What :meth:`Server.drain` found and did.

    Attributes:
        finished: True if every request in flight finished before the deadline.
        elapsed: seconds the drain took.
        cut: client addresses of the requests still running at the deadline,
            whose connections were shut down (threads) or which were sent
            SIGTERM (children).
        remaining: client addresses of the requests still running after the
            cut and the grace period: threads blocked on something other than
            their connection.  Empty in a clean drain.
    """

    finished: bool
    elapsed: float
    cut: tuple[object, ...] = ()
    remaining: tuple[object, ...] = ()


class Server(Generic[RequestT, AddressT]):
    """A server assembled from components.

    Args:
        transport: the listening socket (e.g. ``TCPTransport(("127.0.0.1", 0))``).
        acceptor: turns readiness into a request (``StreamAcceptor()`` or
            ``DatagramAcceptor()``, matching the transport's socket type).
        handler: called as ``handler(request, client_address, server)`` for
            each request, usually a request-handler class.
        verifier: admits or refuses each request (default: admit all).
        dispatcher: where handlers run (default: in the serving thread).
        error_policy: what a handler exception becomes (default: the stdlib
            traceback on stderr).
        timeout_policy: how long ``handle_request()`` waits and how long each
            connection may take (default: :class:`ConnectionTimeouts` with
            :data:`~composable_server.policies.DEFAULT_BUDGET`; pass
            ``NoTimeout()`` for stdlib behaviour).
        accept_error_policy: what a failing ``accept()`` becomes (default:
            :class:`AcceptBackoff`, which never spins; ``RetryImmediately()``
            is stdlib behaviour).
        bind_and_activate: bind and listen now; if either fails the transport
            is closed and the error raised.
        max_parked: the most kept connections (of a handler that parks
            them, ``handlers.ParkingRequestHandler``) waiting in the poll set
            at once; beyond it the least recently used is closed (default
            :data:`~composable_server._request.DEFAULT_MAX_PARKED`, 1000).
        observers: told of each connection's life, accept errors and drains
            (:class:`~composable_server.interfaces.Observer`); none: the
            request path checks one attribute and pays nothing more.
        max_kept_files: the most kept connections whose ``rfile``/``wfile``
            the server keeps for their next message (:attr:`kept_files`,
            :class:`~composable_server._request.KeptFiles`; default
            :data:`~composable_server._request.DEFAULT_KEPT_FILES`, 256:
            ~2 MiB of read buffers); others get new files per message.

    Raises:
        BindError: the address could not be bound.
        ValueError: *max_parked* is below 1, or *max_kept_files* below 0.
    """

    # None: no observers (also for subclasses that build themselves, compat).
    _observers: ObserverGroup | None = None
    # Wake-ups left before the loop probes for a second request again
    # (a failed probe sets _PROBE_BACKOFF).
    _probe_skips = 0

    def __init__(
        self,
        *,
        transport: Transport[RequestT, AddressT],
        acceptor: Acceptor[RequestT, AddressT],
        handler: HandlerFactory[RequestT, AddressT],
        verifier: Verifier[RequestT, AddressT] | None = None,
        dispatcher: Dispatcher | None = None,
        error_policy: ErrorPolicy | None = None,
        timeout_policy: TimeoutPolicy | None = None,
        accept_error_policy: AcceptErrorPolicy | None = None,
        bind_and_activate: bool = True,
        max_parked: int = DEFAULT_MAX_PARKED,
        observers: Iterable[Observer] = (),
        max_kept_files: int = DEFAULT_KEPT_FILES,
    ) -> None:
        if max_parked < 1:
            raise ValueError(f"max_parked must be >= 1, got {max_parked}")
        self.max_parked = max_parked
        self._observers = ObserverGroup.of(observers)
        self.transport = transport
        self.acceptor = acceptor
        self.handler = handler
        # A verifier that counts requests in flight (per-client cap) is told
        # when each one ends; None (no per-request cost) for all others.
        if verifier is None:
            self.verifier: Verifier[RequestT, AddressT] = AllowAll()
            self._release: Callable[[object], None] | None = None  # AllowAll counts nothing
        else:
            from .verifiers import releaser  # here: verifiers (ipaddress) load with a server that has one

            self.verifier = verifier
            self._release = releaser(verifier)
        self.dispatcher: Dispatcher = SyncDispatcher() if dispatcher is None else dispatcher
        self.error_policy: ErrorPolicy = PrintTraceback() if error_policy is None else error_policy
        self.timeout_policy: TimeoutPolicy = ConnectionTimeouts() if timeout_policy is None else timeout_policy
        self.accept_error_policy: AcceptErrorPolicy = (
            AcceptBackoff() if accept_error_policy is None else accept_error_policy
        )
        self.server_address: AddressT = transport.server_address
        # Monotonic time until which accepting is paused (0: not paused).
        self._resume_at = 0.0
        self._accept_failing = False
        self._state_lock = threading.Lock()
        self._serving_thread: int | None = None
        self._shutdown_requested = False
        self._stopped = threading.Event()
        self._stopped.set()
        self._closed = False
        self._waker = Waker()
        # The rfile/wfile of kept connections between their messages, which
        # the next message's handler takes back (handlers.ParkingRequestHandler).
        self.kept_files = KeptFiles(max_kept_files)
        # What this server's jobs share (watchdog, pause flag, wake-up).
        self._requests: RequestPath[RequestT, AddressT] = RequestPath(self, self._waker.wake, self._observers)
        self._requests.plain_finish = type(self).finish_request is Server.finish_request
        self._requests.plain_datagrams = self._plain_datagrams()
        # Silent new connections, while serve_forever or handle_request runs.
        self._parking: Parking[RequestT, AddressT] | None = None
        if bind_and_activate:
            try:
                self.server_bind()
                self.server_activate()
            except BaseException:
                self.server_close()
                raise

    # -- lifecycle -------------------------------------------------------------

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Handle requests until :meth:`shutdown` is called.

        Args:
            poll_interval: seconds between calls of :meth:`service_actions`
                while idle.  Shutdown does not wait for it.

        Raises:
            ServerClosedError: the server was closed.
            ServerStateError: ``serve_forever`` is already running.
        """
        with self._state_lock:
            if self._closed:
                raise ServerClosedError("serve_forever() called on a closed server")
            if self._serving_thread is not None:
                raise ServerStateError("serve_forever() is already running in another thread")
            self._serving_thread = threading.get_ident()
            self._stopped.clear()
        try:
            listen_fd = self.fileno()
            waker = self._waker
            waker_fd = waker.fileno()
            poller = select.poll()
            poller.register(listen_fd, _POLLIN)
            poller.register(waker_fd, _POLLIN)
            paused = select.poll()  # while accepting is paused: the waker only
            paused.register(waker_fd, _POLLIN)
            requests = self._requests
            lines = self._inline_lines()
            parking = self._parking = Parking(
                self, poller, self._process_guarded, self._redispatch_guarded, self.max_parked, self._observers,
                # SyncDispatcher (final) runs jobs here: kept connections are served inline.
                inline=type(self.dispatcher) is SyncDispatcher, lines=lines,
            )
            requests.open_returns(parking)
            # Asked here, in the serving process: a forked child (ForkingDispatcher)
            # would otherwise ask in every child, and never keep the answer.
            requests.handler_traits(self.handler)
            batch = _ACCEPT_BATCH if self.transport.nonblocking else 1
            # Only connections are parked or kept: a datagram loop skips the
            # parking's calls (three per wake-up) altogether.
            connections = self.transport.request_ops.connections
            self._probe_skips = 0
            accept_pending = self._inline_datagrams() or self._accept_pending
            # SyncDispatcher.service does nothing: spare the two calls per wake-up.
            service = (
                None
                if type(self).service_actions is Server.service_actions and type(self.dispatcher) is SyncDispatcher
                else self.service_actions
            )
            timeout_ms = max(0.0, poll_interval * 1000.0)
            while not self._shutdown_requested:
                if self._resume_at:
                    wait = self._resume_at - time.monotonic()
                    if wait > 0:
                        if paused.poll(min(wait * 1000.0, timeout_ms)):
                            # Shutdown, or a request finished and freed a descriptor.
                            waker.drain()
                            self._resume()
                        self.service_actions()
                        continue
                    self._resume()
                wait_ms = timeout_ms
                deadline = parking.next_deadline() if connections else None
                if deadline is not None:
                    wait_ms = min(wait_ms, max(0.0, (deadline - time.monotonic()) * 1000.0))
                for fd, events in poller.poll(wait_ms):
                    if fd == listen_fd:
                        if events & _POLL_DEAD:
                            # The listening descriptor was closed under us.
                            raise ServerClosedError("the listening socket was closed while serving")
                        accept_pending(batch)
                    elif fd == waker_fd:
                        waker.drain()
                    else:
                        parking.ready(fd)
                if deadline is not None and (now := time.monotonic()) >= deadline:
                    parking.expire(now)
                if service is not None:
                    service()
        finally:
            self._leave_loop()

    def _pause(self, delay: float, finishes: int) -> None:
        """Stop accepting for *delay* seconds, or until a request finishes
        (*finishes*: the jobs' count before the failed accept)."""
        self._resume_at = time.monotonic() + delay
        self._requests.pause(finishes)

    def _resume(self) -> None:
        self._resume_at = 0.0
        self._requests.resume()

    def _leave_loop(self) -> None:
        """serve_forever's exit: release parked connections, reset the state."""
        self._requests.close_returns()
        if self._parking is not None:
            self._parking.clear()
            self._parking = None
        with self._state_lock:
            self._shutdown_requested = False
            self._serving_thread = None
            if self._closed:  # server_close() was called from inside the loop
                self._waker.close()
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop :meth:`serve_forever` and wait until it has returned.

        Returns within microseconds of the loop finishing its current
        request; does not wait for ``poll_interval``.  Called when no loop
        is running, it returns at once and the next ``serve_forever`` call
        returns immediately.

        Raises:
            ServerStateError: called from the thread running ``serve_forever``
                (which would wait for itself forever).
        """
        if self._request_shutdown():
            self._stopped.wait()

    def _request_shutdown(self) -> bool:
        """Ask the loop to stop without waiting; True if one is running."""
        with self._state_lock:
            serving = self._serving_thread
            if serving is not None and serving == threading.get_ident():
                raise ServerStateError(
                    "shutdown() called from the thread running serve_forever() would deadlock; "
                    "call it from another thread"
                )
            self._shutdown_requested = True
        self._waker.wake()
        return serving is not None

    def drain(self, timeout: float | None = None, *, grace: float = 1.0) -> DrainReport:
        """Stop accepting, let the requests in flight finish, cut them at the deadline.

        1. Stop :meth:`serve_forever` (as :meth:`shutdown`), so nothing new is
           accepted; pending connections stay in the kernel backlog.
        2. Wait up to *timeout* seconds (None: without limit) for the requests
           in flight.
        3. At the deadline, abort the ones still running: their sockets are
           shut down, so a handler blocked in ``recv`` wakes up; children are
           sent SIGTERM.  Wait up to *grace* more seconds for them to end.

        Does not close the server: call :meth:`server_close` (or leave the
        ``with`` block) afterwards.  A request that completed is never lost.

        Returns:
            A :class:`DrainReport`.

        Raises:
            ServerStateError: called from the thread running ``serve_forever``.
        """
        if self._observers is None:
            return self._drain(timeout, grace)
        self._observers.drain_started(DrainStarted(timeout))
        report = self._drain(timeout, grace)
        self._observers.drain_finished(DrainFinished(**attrs.asdict(report, recurse=False)))
        return report

    def _drain(self, timeout: float | None, grace: float) -> DrainReport:
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        # Waiting for the loop counts against the deadline: under backpressure
        # it is blocked in dispatch() until a worker frees, maybe never (a
        # handler stuck in recv), so the wait must not be shutdown()'s unbounded one.
        self._request_shutdown()
        self._stopped.wait(timeout)
        pending = self.dispatcher.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if not pending:
            # Nothing the dispatcher knows of; a loop still running is busy
            # with something it cannot cut (a handler run inline): not finished.
            stopped = self._stopped.wait(grace)
            return DrainReport(finished=stopped, elapsed=time.monotonic() - started)
        for job in pending:
            job.abort()
        # The cut frees workers, so a loop blocked by backpressure can now stop.
        grace_deadline = time.monotonic() + grace
        if self._stopped.wait(grace):
            # Such a loop handed over the job it was blocked on as it left: that
            # one was in flight at the deadline too, so cut it as well.
            late = [job for job in self.dispatcher.join(0) if all(job is not p for p in pending)]
            for job in late:
                job.abort()
            pending = (*pending, *late)
        remaining = self.dispatcher.join(max(0.0, grace_deadline - time.monotonic()))
        return DrainReport(
            finished=False,
            elapsed=time.monotonic() - started,
            cut=tuple(job.client_address for job in pending),
            remaining=tuple(job.client_address for job in remaining),
        )

    def handle_request(self) -> None:
        """Wait for one request and handle it.

        Waits at most :attr:`timeout` seconds (None: forever); if nothing
        arrives, calls :meth:`handle_timeout` instead.  With a first-byte
        budget, a connection that has said nothing yet is waited for (up to
        that budget) before it is dispatched or closed.

        Raises:
            ServerClosedError: the server was closed.
        """
        if self._closed:
            raise ServerClosedError("handle_request() called on a closed server")
        timeout = self._wait_timeout()
        deadline = None if timeout is None else time.monotonic() + timeout
        poller = select.poll()
        poller.register(self.fileno(), _POLLIN)
        while True:
            if poller.poll(None if timeout is None else timeout * 1000.0):
                self._handle_request_parking()
                return
            if deadline is not None:
                timeout = deadline - time.monotonic()
                if timeout < 0:
                    self.handle_timeout()
                    return

    def _handle_request_parking(self) -> None:
        """One accept for handle_request(); a silent connection is parked in
        a poll set of its own until it speaks or its first byte is overdue."""
        budget = self.timeout_policy.budget
        if self._parking is not None or budget is None or budget.first_byte is None:
            # Nothing to park, or serve_forever runs and its parking takes it.
            self._handle_request_noblock()
            return
        parking = self._parking = Parking(self, select.poll(), self._process_guarded, observers=self._observers)
        try:
            self._handle_request_noblock()
            parking.settle()
        finally:
            self._parking = None
            parking.clear()

    def _wait_timeout(self) -> float | None:
        """Seconds handle_request() waits (compat adds stdlib's socket-timeout rule)."""
        return self.timeout

    def _accept_pending(self, batch: int) -> None:
        """Handle up to *batch* pending requests after one wake-up.

        With a non-blocking listener (*batch* > 1) every pending connection
        is taken, up to the batch, so the waker and parked connections still
        get their turn under a flood; a blocking one gets exactly one accept.
        A loop whose probe for a second request failed skips the probe for
        the next :data:`_PROBE_BACKOFF` wake-ups.
        Only the first accept consults the AcceptErrorPolicy: at the
        descriptor limit Linux fails accept() with EMFILE even when nothing is
        pending (the descriptor is allocated first), so a follow-up failure
        only ends the batch; if connections are really waiting, the listener
        stays readable and the next wake-up's first accept reports it.
        """
        if not self._handle_request_noblock():
            return
        if self._probe_skips:  # low load: see _PROBE_BACKOFF
            self._probe_skips -= 1
            return
        for taken in range(batch - 1):
            if self._shutdown_requested or self._resume_at:
                return
            try:
                request, client_address = self.get_request()
            except OSError:
                if not taken:
                    self._probe_skips = _PROBE_BACKOFF
                return
            self._serve_accepted(request, client_address)

    def _handle_request_noblock(self) -> bool:
        """Accept, verify and dispatch one request (stdlib's private method of
        the same name).  Return True if a request was accepted."""
        finishes = self._requests.finishes
        try:
            request, client_address = self.get_request()
        except BlockingIOError:
            return False  # a non-blocking listener with nothing (left) pending
        except OSError as exc:
            self._accept_failed(exc, finishes)
            return False
        self._serve_accepted(request, client_address)
        return True

    def _accept_failed(self, exc: OSError, finishes: int) -> None:
        """Report a failed accept to the AcceptErrorPolicy (and the
        observers); pause accepting if it asks for a delay."""
        self._accept_failing = True
        delay = self.accept_error_policy.accept_failed(exc)
        if self._observers is not None:
            self._observers.accept_failed(AcceptFailed(_error_name(exc), delay))
        if delay > 0:
            self._pause(delay, finishes)

    def _plain_datagrams(self) -> bool:
        """True if this server's datagrams need neither ``start_request``
        nor ``shutdown_request`` (``RequestPath.plain_datagrams``)."""
        transport = self.transport
        return (
            not transport.request_ops.connections
            and not transport.late_admission
            and self._release is None
            and type(self).shutdown_request is Server.shutdown_request
            and _plain_datagram_transport(transport)
        )

    def _inline_datagrams(self) -> Callable[[int], None] | None:
        """serve_forever's accept step for datagrams served inline, or None.

        It applies on a ``SyncDispatcher``, with the plain
        ``DatagramAcceptor`` on a ``UDPTransport`` or
        ``UnixDatagramTransport``, no observers, and none of the hooks on the
        request path overridden (:data:`_INLINE_HOOKS`; compat overrides
        ``shutdown_request``, so it never applies there).  Each datagram is
        then received, verified and served in the function returned, with
        the outcomes of the job path (``_accept_pending``, ``DatagramJob``),
        which takes about ten Python calls more per datagram (issue 18): the
        same batch and probe back-off; a failing ``recvfrom`` or an oversized
        datagram goes to the AcceptErrorPolicy; a refused datagram is not
        served; an exception from the verifier or the handler goes to
        :meth:`handle_error` and the loop serves on; a releasing verifier is
        told of every datagram it was asked about.  The handler is called as
        ``handler(request, client_address, server)``, except a
        :class:`~composable_server.handlers.DatagramResponder` (the lean
        datagram mode), whose ``handle_datagram`` is called here and whose
        reply is sent here (a full send queue retries, then drops it, as
        ``DatagramRequestHandler.finish``; a failing ``sendto`` goes to
        :meth:`handle_error`).
        """
        from .acceptors import DatagramAcceptor  # here: loaded already with a datagram server

        # object: mypy sees no overlap between Acceptor[RequestT, AddressT] and the final DatagramAcceptor.
        acceptor = cast(object, self.acceptor)
        cls = type(self)
        if (
            type(acceptor) is not DatagramAcceptor
            or not _plain_datagram_transport(self.transport)
            or type(self.dispatcher) is not SyncDispatcher
            or self._observers is not None
            or any(getattr(cls, hook) is not getattr(Server, hook) for hook in _INLINE_HOOKS)
        ):
            return None
        handler = self.handler
        responder = datagram_responder(handler)
        handle, send_or_drop = (None, None) if responder is None else responder
        sock = self.transport.socket
        recvfrom, sendto = sock.recvfrom, sock.sendto
        size = acceptor.max_packet_size + 1  # as DatagramAcceptor.accept: a datagram that fills it is too large
        limit = acceptor.max_packet_size
        oversized = acceptor.oversized
        # The requests of a datagram transport are (data, socket), DatagramRequest.
        verify: Callable[[DatagramRequest, object], bool] | None = (
            None if type(self.verifier) is AllowAll else self.verifier.verify  # type: ignore[assignment]  # see above
        )
        handle_error: Callable[[DatagramRequest, object], None] = self.handle_error  # type: ignore[assignment]  # as above
        release = self._release
        requests = self._requests

        def serve_datagrams(batch: int) -> None:
            taken = 0
            while True:
                try:
                    data, address = recvfrom(size)
                    if len(data) > limit:
                        raise oversized(address)
                except BlockingIOError:
                    if taken == 1:
                        self._probe_skips = _PROBE_BACKOFF
                    return
                except OSError as exc:
                    # As _accept_pending: only the first receive of a wake-up consults the policy.
                    if not taken:
                        self._accept_failed(exc, requests.finishes)
                    elif taken == 1:
                        self._probe_skips = _PROBE_BACKOFF
                    return
                if self._accept_failing:
                    self._accept_failing = False
                    self.accept_error_policy.accepted()
                request = (data, sock)
                try:
                    if verify is not None and not verify(request, address):
                        pass  # refused: nothing to serve, nothing to shut down
                    elif handle is None:
                        handler(request, address, self)  # type: ignore[arg-type]  # (data, socket) is this server's request
                    else:
                        reply = handle(data, address)
                        if reply is not None:
                            try:
                                sendto(reply, address)
                            except BlockingIOError:
                                send_or_drop(sock, reply, address)  # type: ignore[misc]  # set with handle
                except Exception:
                    handle_error(request, address)
                finally:
                    if release is not None:
                        release(request)
                taken += 1
                if taken == batch or self._shutdown_requested or self._resume_at:
                    return
                if taken == 1 and self._probe_skips:  # see _PROBE_BACKOFF
                    self._probe_skips -= 1
                    return

        return serve_datagrams

    def _inline_lines(self) -> Callable[[RequestT, bytes, AddressT], bytes | None] | None:
        """What serves a ready kept connection in the loop in the lean line
        mode (``Parking``'s *lines*), or None.

        It applies to a :class:`~composable_server.handlers.LineResponder`
        on a ``SyncDispatcher`` with a plain ``TCPTransport`` or
        ``UnixStreamTransport``, no observers, and none of the hooks on the
        request path overridden (:data:`_INLINE_HOOKS`): its
        ``serve_lines`` is then called for each ready kept connection, with
        no job run in between.  A connection's start, its budgets, the
        verifier and closing stay the job's (``RequestJob``); a new
        connection that has not spoken yet waits among the kept ones
        (``client_speaks_first``), so its first line is served here too and
        a silent client costs the loop no wait.
        """
        from .transports import TCPTransport, UnixStreamTransport  # here: loaded already with a stream server

        handler = self.handler
        cls = type(self)
        if (
            type(self.dispatcher) is not SyncDispatcher
            or self._observers is not None
            or type(cast(object, self.transport)) not in (TCPTransport, UnixStreamTransport)
            or any(getattr(cls, hook) is not getattr(Server, hook) for hook in _INLINE_HOOKS)
        ):
            return None
        return line_responder(handler)

    def _serve_accepted(self, request: RequestT, client_address: AddressT) -> None:
        """Verify, then park or dispatch an accepted request.

        A ``late_admission`` transport's client is known only after
        ``start_request``: its job verifies in the worker instead.
        """
        if self._accept_failing:
            self._accept_failing = False
            self.accept_error_policy.accepted()
        observers = self._observers
        if observers is not None:
            self._serve_observed(observers, request, client_address)
            return
        try:
            if not self.transport.late_admission and not self.verify_request(request, client_address):
                self.shutdown_request(request)
                return
            parking = self._parking
            # Only connections park (a datagram is complete): spare datagrams the call.
            if parking is None or not self.transport.request_ops.connections or not parking.park(request, client_address):
                self.process_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
            self.shutdown_request(request)
        except BaseException:
            self.shutdown_request(request)
            raise

    def _serve_observed(self, observers: ObserverGroup, request: RequestT, client_address: AddressT) -> None:
        """_serve_accepted, telling *observers* of the accept and a refusal."""
        observers.connection_accepted(ConnectionAccepted(client_address))
        try:
            if not self.transport.late_admission and not self.verify_request(request, client_address):
                self.shutdown_request(request)
                observers.connection_refused(verifier_refusal(client_address, self.verifier))
                return
            parking = self._parking
            if parking is None or not parking.park(request, client_address):
                self._process_observed(observers, request, client_address)
        except Exception as exc:
            self.handle_error(request, client_address)
            self.shutdown_request(request)
            observers.connection_refused(ConnectionRefused(client_address, "verifier", repr(exc)))
        except BaseException:
            self.shutdown_request(request)
            raise

    def _process_observed(self, observers: ObserverGroup, request: RequestT, client_address: AddressT) -> None:
        """process_request(), reporting a job the dispatcher rejected (pool
        full): its ``rejected`` count grows during the call, which runs on
        the serving loop, the only thread that dispatches."""
        rejected = _rejected(self.dispatcher)
        self.process_request(request, client_address)
        if rejected is not None and _rejected(self.dispatcher) != rejected:
            observers.connection_refused(ConnectionRefused(client_address, "pool_full", repr(self.dispatcher)))

    def _process_guarded(self, request: RequestT, client_address: AddressT) -> None:
        """process_request() for a parked connection that became readable."""
        try:
            if self._observers is not None:
                self._process_observed(self._observers, request, client_address)
            else:
                self.process_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
            self.shutdown_request(request)
        except BaseException:
            self.shutdown_request(request)
            raise

    def _redispatch_guarded(self, job: RequestJob[RequestT, AddressT]) -> None:
        """dispatcher.dispatch() for a kept connection that became readable."""
        try:
            self.dispatcher.dispatch(job)
        except Exception:
            self.handle_error(job.request, job.client_address)
            job.release()
        except BaseException:
            job.release()
            raise

    def server_close(self) -> None:
        """Stop serving, close the listening socket, and let the dispatcher
        finish (joining threads or children if it blocks on close).

        Idempotent.  A loop running in another thread is shut down first.
        """
        with self._state_lock:
            serving = self._serving_thread
            self._closed = True
        in_loop = serving is not None and serving == threading.get_ident()
        if serving is not None and not in_loop:
            self.shutdown()
        # The dispatcher first: requests in flight may still need the
        # listening socket (a datagram reply goes out through it).  stdlib
        # closes the socket first, and such replies fail with EBADF.
        self.dispatcher.close()
        self.transport.close()
        self._requests.close()
        self.kept_files.close_all()
        if not in_loop:  # else serve_forever closes it on its way out
            self._waker.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.server_close()

    # -- hooks (stdlib BaseServer names; each delegates to a component) ---------

    @property
    def parked_connections(self) -> int:
        """How many connections wait in the serving loop's poll set now
        (silent new ones and kept ones between messages); 0 when no loop runs."""
        parking = self._parking
        return 0 if parking is None else len(parking)

    @property
    def timeout(self) -> float | None:
        """Seconds :meth:`handle_request` waits (from the timeout policy)."""
        return self.timeout_policy.timeout

    def fileno(self) -> int:
        """The listening descriptor (``-1`` once closed)."""
        return self.transport.fileno()

    def server_bind(self) -> None:
        """Bind the transport and record the bound address in :attr:`server_address`."""
        self.transport.bind()
        self.server_address = self.transport.server_address

    def server_activate(self) -> None:
        """Start listening."""
        self.transport.activate()

    def get_request(self) -> tuple[RequestT, AddressT]:
        """Accept one request from the transport."""
        return self.acceptor.accept(self.transport)

    def verify_request(self, request: RequestT, client_address: AddressT) -> bool:
        """Ask the verifier whether *request* may be served."""
        return self.verifier.verify(request, client_address)

    def process_request(self, request: RequestT, client_address: AddressT) -> None:
        """Hand the request to the dispatcher."""
        transport = self.transport
        job: DatagramJob[RequestT, AddressT] | RequestJob[RequestT, AddressT]
        if self._observers is None and not transport.request_ops.connections and not transport.late_admission:
            job = DatagramJob(self._requests, request, client_address)  # the lean job of a datagram
        else:
            job = RequestJob(self._requests, request, client_address)
        self.dispatcher.dispatch(job)

    def finish_request(self, request: RequestT, client_address: AddressT) -> object:
        """Run the handler for one request; return what it returned (a
        handler that parks connections carries its verdict there)."""
        return self.handler(request, client_address, self)

    def shutdown_request(self, request: RequestT) -> None:
        """Shut down and close a finished request (telling a releasing verifier first)."""
        if self._release is not None:
            self._release(request)
        self.transport.shutdown_request(request)

    def close_request(self, request: RequestT) -> None:
        """Close a request without shutting it down (telling a releasing verifier first)."""
        if self._release is not None:
            self._release(request)
        self.transport.close_request(request)

    def handle_error(self, request: RequestT, client_address: AddressT) -> None:
        """Report the exception being handled to the error policy.

        Called inside the ``except`` block, so ``sys.exc_info()`` works here.
        """
        exc = sys.exc_info()[1]
        if exc is None:
            exc = ServerError("handle_error() was called while no exception was being handled")
        self.error_policy.handle_error(request, client_address, exc)

    def handle_timeout(self) -> None:
        """Called when :meth:`handle_request` waited :attr:`timeout` in vain."""
        self.timeout_policy.handle_timeout()

    def service_actions(self) -> None:
        """Called once per loop iteration of :meth:`serve_forever`; lets the
        dispatcher do its housekeeping (reaping children, threads)."""
        self.dispatcher.service()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "serving" if self._serving_thread is not None else "idle"
        return (
            f"<{type(self).__qualname__} {self.server_address!r} {state} "
            f"transport={type(self.transport).__name__} dispatcher={self.dispatcher!r}>"
        )
