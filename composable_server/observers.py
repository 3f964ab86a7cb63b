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
    "verifier_refusal",
)

_logger = logging.getLogger("composable_server.observers")

LOG_INTERVAL: Final = 10.0
"""Seconds between two log records of failing observers."""

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
    """

    __slots__ = ("_limiter", "_lock", "observers")

    def __init__(self, observers: Iterable[Observer]) -> None:
        self.observers: tuple[Observer, ...] = tuple(observers)
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


@final
class AccessLog(BaseObserver):
    """One log record per finished request (off unless added to a server)::

        127.0.0.1:51234 in=- out=- 0.0012s ok
        127.0.0.1:51236 in=- out=- 0.0003s handler_error ValueError

    Args:
        logger: where the records go (default: ``composable_server.access``, at INFO).
        format_address: how a client address is written.

    Bytes in and out are not known (``-``): the request path never sees the
    handler's reads and writes, which go straight to the socket or through
    the handler's own files.
    """

    __slots__ = ("_format", "_logger")

    def __init__(
        self,
        logger: logging.Logger | None = None,
        format_address: Callable[[object], str] = str,
    ) -> None:
        self._logger = logging.getLogger("composable_server.access") if logger is None else logger
        self._format = format_address

    def request_finished(self, event: RequestFinished) -> None:
        """Log the request: client, bytes (unknown: ``-``), duration, outcome."""
        if not self._logger.isEnabledFor(logging.INFO):
            return
        detail = event.budget if event.outcome == "budget" else event.error
        self._logger.info(
            "%s in=- out=- %.4fs %s%s",
            self._format(event.client_address),
            event.duration,
            event.outcome,
            f" {detail}" if detail else "",
        )

    def connection_refused(self, event: ConnectionRefused) -> None:
        """Log the refusal and its reason."""
        if self._logger.isEnabledFor(logging.INFO):
            self._logger.info("%s refused %s %s", self._format(event.client_address), event.reason, event.detail)
