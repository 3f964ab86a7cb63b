"""Prometheus metrics and an access log, built on the observer events.

Needs the ``metrics`` extra (``pip install 'composable-server[metrics]'``,
which brings ``prometheus_client``)::

    from composable_server.metrics import MetricsObserver, metrics_handler

    observer = MetricsObserver(transport="tcp", address="127.0.0.1:8000")
    server = Server(..., observers=[observer])

The names follow OpenTelemetry's Kestrel server metrics, with a prefix
(default ``composable_server``) and the labels ``transport`` and ``address``:

======================================================  =========  ==========================
name                                                    kind       extra labels
======================================================  =========  ==========================
``<prefix>_active_connections``                         gauge
``<prefix>_connection_duration_seconds``                histogram  ``error_type`` ("" if ok)
``<prefix>_rejected_connections_total``                 counter    ``reason``
``<prefix>_queued_connections``                         gauge      (read at scrape time)
``<prefix>_active_tls_handshakes``                      gauge
``<prefix>_tls_handshake_duration_seconds``             histogram  ``error_type``
======================================================  =========  ==========================

Processes.  Each process counts its own connections.  Under prefork the
workers are forked from the supervisor, so the counts of every worker reach
one scrape through ``prometheus_client``'s multiprocess mode: the
environment variable ``PROMETHEUS_MULTIPROC_DIR`` names a directory (set
before ``prometheus_client`` is first imported) in which each process keeps
its values in a memory-mapped file of its own; the supervisor serves
``/metrics`` from a :class:`~prometheus_client.multiprocess.MultiProcessCollector`
over that directory, and calls ``mark_process_dead`` for each reaped worker
(:class:`WorkerReaper`), so its live gauges drop out while its counters and
histograms stay.  This needs no pipe or protocol between supervisor and
workers, survives a worker's crash (its file stays), and is the mode
``prometheus_client`` documents for gunicorn-style servers.  The queue
depth is not a per-process value: :class:`QueueDepthCollector` reads it from
the shared listening socket at scrape time, in whichever process serves
``/metrics``.

The access log (:class:`~composable_server.observers.AccessLog`) needs no
extra, and lives with the observers.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterable
from typing import Final, final

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from .interfaces import (
    ConnectionAccepted,
    ConnectionRefused,
    RequestFinished,
    RequestStarted,
    TransportStarted,
    WorkerExited,
)
from .observers import BaseObserver

__all__ = (
    "DEFAULT_PREFIX",
    "MetricsObserver",
    "QueueDepthCollector",
    "WorkerReaper",
    "accept_queue_depth",
    "metrics_handler",
    "multiprocess_registry",
)

DEFAULT_PREFIX: Final = "composable_server"
"""The metric name prefix unless one is given."""

_LABELS: Final = ("transport", "address")

# struct tcp_info (linux/tcp.h): eight u8 fields, then u32 rto, ato,
# snd_mss, rcv_mss, unacked.  On a listening socket tcpi_unacked is the
# accept queue's current length (sk_ack_backlog), tcpi_sacked its maximum.
_TCPI_UNACKED: Final = 8 + 4 * 4
_TCP_INFO_SIZE: Final = 104


def accept_queue_depth(sock: socket.socket) -> int | None:
    """Connections waiting in *sock*'s accept queue (Linux ``TCP_INFO`` on a
    listening TCP socket); None where that cannot be read (another OS or
    family, a closed socket)."""
    tcp_info = getattr(socket, "TCP_INFO", None)
    if tcp_info is None or sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, tcp_info, _TCP_INFO_SIZE)
    except OSError:
        return None
    if len(info) < _TCPI_UNACKED + 4:
        return None
    depth: int = struct.unpack_from("=I", info, _TCPI_UNACKED)[0]
    return depth


@final
class QueueDepthCollector(Collector):
    """``<prefix>_queued_connections``: the accept-queue depth of a
    listening socket, read at each scrape (nothing where it cannot be read).

    Args:
        sock: the listening socket, or a callable returning it (None: closed).
        transport, address: the label values.
        prefix: the metric name prefix.
    """

    def __init__(
        self,
        sock: socket.socket | Callable[[], socket.socket | None],
        *,
        transport: str,
        address: str,
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        self._sock = sock
        self._labels = [transport, address]
        self._name = f"{prefix}_queued_connections"

    def collect(self) -> Iterable[Metric]:
        """One gauge sample, or none if the depth cannot be read."""
        sock = self._sock() if callable(self._sock) else self._sock
        depth = None if sock is None else accept_queue_depth(sock)
        family = GaugeMetricFamily(
            self._name, "Connections waiting in the listening socket's accept queue.", labels=_LABELS
        )
        if depth is not None:
            family.add_metric(self._labels, depth)
        yield family


def _error_type(event: RequestFinished) -> str:
    if event.outcome == "ok":
        return ""
    if event.outcome == "budget":
        return f"budget_{event.budget}"
    if event.outcome == "drain":
        return "drain"
    return event.error or event.outcome


@final
class MetricsObserver(BaseObserver):
    """An observer keeping the Kestrel-style metrics of one server.

    Thread-safe (``prometheus_client``'s metrics are); in a forked worker
    under multiprocess mode its values go to that process's own files.

    Args:
        transport: the ``transport`` label (e.g. ``"tcp"``, ``"tls"``).
        address: the ``address`` label (e.g. ``"127.0.0.1:8000"``).
        prefix: the metric name prefix.
        tls: the transport does TLS handshakes (time them).
        registry: where the metrics are registered (default: the global
            registry; None: none, e.g. in a prefork worker, whose values
            reach the scrape through the multiprocess files).
    """

    __slots__ = (
        "_active",
        "_duration",
        "_duration_labels",
        "_handshake",
        "_handshakes",
        "_rejected",
        "_tls",
    )

    def __init__(
        self,
        *,
        transport: str,
        address: str,
        prefix: str = DEFAULT_PREFIX,
        tls: bool = False,
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        labels = (transport, address)
        active = Gauge(
            f"{prefix}_active_connections",
            "Connections open (accepted, not yet refused or finished).",
            _LABELS,
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._active = active.labels(*labels)
        self._duration = Histogram(
            f"{prefix}_connection_duration_seconds",
            "Seconds from a request's start to its end.",
            (*_LABELS, "error_type"),
            registry=registry,
        )
        rejected = Counter(
            f"{prefix}_rejected_connections",
            "Connections refused before a handler ran.",
            (*_LABELS, "reason"),
            registry=registry,
        )
        handshakes = Gauge(
            f"{prefix}_active_tls_handshakes",
            "TLS handshakes in progress.",
            _LABELS,
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._handshakes = handshakes.labels(*labels)
        handshake = Histogram(
            f"{prefix}_tls_handshake_duration_seconds",
            "Seconds a TLS handshake took.",
            (*_LABELS, "error_type"),
            registry=registry,
        )
        self._handshake = (handshake, labels)
        self._rejected = (rejected, labels)
        self._tls = tls
        self._duration_labels = labels

    def connection_accepted(self, event: ConnectionAccepted) -> None:
        """One more connection open."""
        self._active.inc()

    def connection_refused(self, event: ConnectionRefused) -> None:
        """Count the refusal by reason; one connection less open."""
        counter, labels = self._rejected
        counter.labels(*labels, event.reason).inc()
        self._active.dec()

    def request_started(self, event: RequestStarted) -> None:
        """A TLS handshake begins (TLS transports; not for the next message
        of a kept connection, which has none)."""
        if self._tls and event.starting:
            self._handshakes.inc()

    def transport_started(self, event: TransportStarted) -> None:
        """The TLS handshake ended: observe its duration."""
        if self._tls:
            self._handshakes.dec()
            histogram, labels = self._handshake
            histogram.labels(*labels, event.error or "").observe(event.duration)

    def request_finished(self, event: RequestFinished) -> None:
        """Observe the duration by error type; one connection less open."""
        self._duration.labels(*self._duration_labels, _error_type(event)).observe(event.duration)
        self._active.dec()


@final
class WorkerReaper(BaseObserver):
    """A prefork supervisor's observer: ``mark_process_dead`` for each reaped
    worker, so its live gauges leave the multiprocess scrape.

    Args:
        directory: the ``PROMETHEUS_MULTIPROC_DIR``.
    """

    __slots__ = ("directory",)

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def worker_exited(self, event: WorkerExited) -> None:
        """Drop the worker's live gauge files."""
        mark_process_dead(event.pid, self.directory)  # type: ignore[no-untyped-call]  # unannotated upstream


def multiprocess_registry(directory: str) -> CollectorRegistry:
    """A registry that collects every process's values from *directory*
    (``PROMETHEUS_MULTIPROC_DIR``), for the process serving ``/metrics``."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]  # unannotated upstream
    return registry


_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


def metrics_handler(registry: CollectorRegistry = REGISTRY) -> Callable[[socket.socket, object, object], None]:
    """A composable_server handler serving *registry* in the Prometheus text
    format: ``GET /metrics`` gets the scrape, any other path 404, any other
    method 405.  One request per connection."""

    def handle(request: socket.socket, client_address: object, server: object) -> None:
        with request.makefile("rb") as reader:
            line = reader.readline(8192)
            while reader.readline(8192) not in (b"\r\n", b"\n", b""):
                pass  # the headers: nothing in them matters here
        parts = line.split()
        if len(parts) < 2 or parts[0] not in (b"GET", b"HEAD"):
            status, body = "405 Method Not Allowed", b"GET /metrics\n"
        elif parts[1].split(b"?", 1)[0] != b"/metrics":
            status, body = "404 Not Found", b"GET /metrics\n"
        else:
            status, body = "200 OK", generate_latest(registry)
        head = f"HTTP/1.1 {status}\r\nContent-Type: {_CONTENT_TYPE}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        request.sendall(head.encode("ascii") + (b"" if parts[:1] == [b"HEAD"] else body))

    return handle
