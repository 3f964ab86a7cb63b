"""Observing a server: a no-op :class:`~composable_server.interfaces.Observer`
to subclass, and the fan-out a server uses (the event records are in
:mod:`composable_server.interfaces`).

Theory of operation
-------------------

A server built with ``observers=[...]`` wraps them in one :class:`ObserverGroup`;
a server without observers holds None, and its request path checks that one
attribute and nothing else (no event is built, no clock is read).

The life of a connection, as events::

    connection_accepted                     the acceptor returned it
      -> connection_refused                 verifier said no, or the pool was full
         (end)
      -> request_started                    a worker took the job
         -> transport_started               start_request returned or raised
                                            (TLS handshake, PROXY header)
         -> request_finished                outcome: ok, handler_error, budget,
                                            drain, client_gone, start_failed
    connection cut while parked             request_finished(outcome="budget",
                                            budget="first_byte"), no request_started

Every accepted connection ends in exactly one ``connection_refused`` or
``request_finished``, so "accepted minus ended" is the number open.  Events
of one connection arrive in that order, from the thread (or forked child)
that does the work: ``connection_*`` from the serving loop,
``request_*``/``transport_started`` from the worker.  An observer shared
between threads guards its own state.

An observer that raises is logged (at most one record per
:data:`LOG_INTERVAL` seconds, with the count skipped) and serving goes on.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final, final

from ._util import LogLimiter

from .interfaces import (
    AcceptFailed,
    ConnectionAccepted,
    ConnectionRefused,
    DrainFinished,
    DrainStarted,
    RefusalReason,
    RequestFinished,
    RequestStarted,
    TransportStarted,
    WorkerExited,
    WorkerStarted,
)

if TYPE_CHECKING:
    from .interfaces import Observer

__all__ = (
    "AccessLog",
    "LOG_INTERVAL",
    "BaseObserver",
    "ObserverGroup",
    "transferred",
    "verifier_refusal",
)

_logger = logging.getLogger("composable_server.observers")

LOG_INTERVAL: Final = 10.0
"""Seconds between two log records of failing observers."""

# struct tcp_info (linux/tcp.h, since Linux 4.1/4.2): eight u8 fields, 24
# u32 (rto ... total_retrans: offset 104), u64 pacing_rate and
# max_pacing_rate, then u64 tcpi_bytes_acked (RFC 4898
# tcpEStatsAppHCThruOctetsAcked) at 120 and u64 tcpi_bytes_received
# (tcpEStatsAppHCThruOctetsReceived) at 128.
_TCPI_BYTES_ACKED: Final = 120
_TCPI_BYTES_RECEIVED: Final = 128
_TCP_INFO_BYTES: Final = 136
_TCP_FAMILIES: Final = frozenset({socket.AF_INET, socket.AF_INET6})


def transferred(request: object) -> tuple[int | None, int | None]:
    """``(bytes in, bytes out)`` of *request* so far, None where unknown.

    A TCP socket (plain, TLS, or a PROXY layer's ``ProxiedSocket``): the
    kernel's counts (Linux ``TCP_INFO``: ``tcpi_bytes_received``, and
    ``tcpi_bytes_acked``, the bytes the peer acknowledged).  They count
    every byte on the connection, whatever the handler read or wrote them
    with, so under TLS they are wire bytes (handshake and records), and a
    PROXY header is counted in.  A datagram request ``(data, socket)``: its
    length in, unknown out.  Anything else (Unix sockets, another OS): unknown.
    """
    if isinstance(request, socket.socket):
        tcp_info = getattr(socket, "TCP_INFO", None)
        if tcp_info is None or request.family not in _TCP_FAMILIES or request.type != socket.SOCK_STREAM:
            return None, None
        try:
            info = request.getsockopt(socket.IPPROTO_TCP, tcp_info, _TCP_INFO_BYTES)
        except OSError:  # closed or not connected
            return None, None
        if len(info) < _TCP_INFO_BYTES:  # a kernel older than the fields
            return None, None
        received: int = struct.unpack_from("=Q", info, _TCPI_BYTES_RECEIVED)[0]
        acked: int = struct.unpack_from("=Q", info, _TCPI_BYTES_ACKED)[0]
        return received, acked
    if isinstance(request, tuple) and len(request) == 2 and isinstance(request[0], bytes):
        return len(request[0]), None
    return None, None


class BaseObserver:
    """An :class:`~composable_server.interfaces.Observer` that does nothing:
    subclass it and override only the events you need."""

    __slots__ = ()

    def connection_accepted(self, event: ConnectionAccepted) -> None:
        """See :class:`~composable_server.interfaces.Observer`."""

    def connection_refused(self, event: ConnectionRefused) -> None:
        """See :class:`~composable_server.interfaces.Observer`."""

    def request_started(self, event: RequestStarted) -> None:
        """See :class:`~composable_server.interfaces.Observer`."""

    def transport_started(self, event: TransportStarted) -> None:
        """See :class:`~composable_server.interfaces.Observer`."""

    def request_finished(self, event: RequestFinished) -> None:
        """See :class:`~composable_server.interfaces.Observer`."""

    def accept_failed(self, event: AcceptFailed) -> None:
        """See :class:`~composable_server.interfaces.Observer`."""

    def drain_started(self, event: DrainStarted) -> None:
        """See :class:`~composable_server.interfaces.Observer`."""

    def drain_finished(self, event: DrainFinished) -> None:
        """See :class:`~composable_server.interfaces.Observer`."""

    def worker_started(self, event: WorkerStarted) -> None:
        """See :class:`~composable_server.interfaces.Observer`."""

    def worker_exited(self, event: WorkerExited) -> None:
        """See :class:`~composable_server.interfaces.Observer`."""


@final
class ObserverGroup:
    """Several observers as one: each event goes to each, in order; an
    observer that raises is logged (rate-limited) and skipped.

    Args:
        observers: the observers, in the order they are told.

    Attributes:
        wants_bytes: some observer has ``wants_bytes = True``: the server
            fills :attr:`RequestFinished.bytes_in
            <composable_server.interfaces.RequestFinished.bytes_in>` and
            ``bytes_out``.
    """

    __slots__ = ("_limiter", "_lock", "observers", "wants_bytes")

    def __init__(self, observers: Iterable[Observer]) -> None:
        self.observers: tuple[Observer, ...] = tuple(observers)
        # Byte counts cost a getsockopt per request: read only if one asks.
        self.wants_bytes = any(getattr(observer, "wants_bytes", False) is True for observer in self.observers)
        self._limiter = LogLimiter(LOG_INTERVAL)
        self._lock = threading.Lock()

    @classmethod
    def of(cls, observers: Iterable[Observer] | None) -> ObserverGroup | None:
        """A group of *observers*, or None if there are none (the server's
        request path then pays nothing)."""
        group = cls(observers or ())
        return group if group.observers else None

    def _emit(self, name: str, event: object) -> None:
        for observer in self.observers:
            try:
                getattr(observer, name)(event)
            except Exception as exc:
                with self._lock:
                    skipped = self._limiter.due(time.monotonic())
                if skipped is not None:
                    _logger.error(
                        "observer %r failed in %s (%d failures not logged since the last record)",
                        observer,
                        name,
                        skipped,
                        exc_info=exc,
                    )

    def connection_accepted(self, event: ConnectionAccepted) -> None:
        """Tell every observer."""
        self._emit("connection_accepted", event)

    def connection_refused(self, event: ConnectionRefused) -> None:
        """Tell every observer."""
        self._emit("connection_refused", event)

    def request_started(self, event: RequestStarted) -> None:
        """Tell every observer."""
        self._emit("request_started", event)

    def transport_started(self, event: TransportStarted) -> None:
        """Tell every observer."""
        self._emit("transport_started", event)

    def request_finished(self, event: RequestFinished) -> None:
        """Tell every observer."""
        self._emit("request_finished", event)

    def accept_failed(self, event: AcceptFailed) -> None:
        """Tell every observer."""
        self._emit("accept_failed", event)

    def drain_started(self, event: DrainStarted) -> None:
        """Tell every observer."""
        self._emit("drain_started", event)

    def drain_finished(self, event: DrainFinished) -> None:
        """Tell every observer."""
        self._emit("drain_finished", event)

    def worker_started(self, event: WorkerStarted) -> None:
        """Tell every observer."""
        self._emit("worker_started", event)

    def worker_exited(self, event: WorkerExited) -> None:
        """Tell every observer."""
        self._emit("worker_exited", event)


_VERIFIER_REASONS: Final[dict[str, RefusalReason]] = {
    "ConnectionCapVerifier": "connection_cap",
    "RateLimitVerifier": "rate_limit",
    "CIDRVerifier": "cidr",
    "PeerCredentialsVerifier": "peer_credentials",
}


def verifier_refusal(client_address: object, verifier: object) -> ConnectionRefused:
    """The event for *verifier* refusing *client_address* (reason by its class)."""
    name = type(verifier).__name__
    return ConnectionRefused(client_address, _VERIFIER_REASONS.get(name, "verifier"), name)


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


@final
class AccessLog(BaseObserver):
    """One log record per finished request (off unless added to a server)::

        127.0.0.1:51234 in=78 out=1520 0.0012s ok
        127.0.0.1:51236 in=80 out=0 0.0003s handler_error ValueError
        /tmp/s.sock in=- out=- 0.0002s ok

    Args:
        logger: where the records go (default: ``composable_server.access``, at INFO).
        format_address: how a client address is written.

    Bytes in and out (``wants_bytes``: the server reads them at the end of
    each connection, see :func:`transferred`) are the kernel's counts for
    TCP, so under TLS they are wire bytes, and out is what the client
    acknowledged; a datagram's length in; ``-`` where unknown (Unix
    sockets, out for datagrams).  Nothing is formatted while the logger is
    disabled for INFO.
    """

    __slots__ = ("_format", "_logger")

    wants_bytes: Final = True

    def __init__(
        self,
        logger: logging.Logger | None = None,
        format_address: Callable[[object], str] = str,
    ) -> None:
        self._logger = logging.getLogger("composable_server.access") if logger is None else logger
        self._format = format_address

    def request_finished(self, event: RequestFinished) -> None:
        """Log the request: client, bytes in and out (unknown: ``-``), duration, outcome."""
        logger = self._logger
        if not logger.isEnabledFor(logging.INFO):
            return
        detail = event.budget if event.outcome == "budget" else event.error
        logger.info(
            "%s in=%s out=%s %.4fs %s%s",
            self._format(event.client_address),
            _count(event.bytes_in),
            _count(event.bytes_out),
            event.duration,
            event.outcome,
            f" {detail}" if detail else "",
        )

    def connection_refused(self, event: ConnectionRefused) -> None:
        """Log the refusal and its reason."""
        if self._logger.isEnabledFor(logging.INFO):
            self._logger.info("%s refused %s %s", self._format(event.client_address), event.reason, event.detail)
