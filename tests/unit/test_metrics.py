"""composable_server.metrics on the fakes (the accept-queue depth: tests/integration/test_metrics.py)."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from composable_server import Server
from composable_server.interfaces import (
    ConnectionAccepted,
    ConnectionRefused,
    RequestFinished,
    RequestStarted,
    TransportStarted,
)
from composable_server.metrics import MetricsObserver
from composable_server.observers import AccessLog, BaseObserver, ObserverGroup
from composable_server.testing import (
    InlineDispatcher,
    MemoryAcceptor,
    MemoryTransport,
    MemoryVerifier,
    RecordingHandler,
)

WAIT = 10.0


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape of *registry*, parsed by prometheus_client's own parser."""
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The samples() key of metric *name* with *labels*."""
    return name, tuple(sorted(labels.items()))


MEMORY = {"transport": "memory", "address": "memory"}


class TestMetricsObserver:
    @pytest.mark.timeout(10)
    def test_counts_follow_the_requests(self) -> None:
        """Served, failed and refused requests show in the histogram, the counter and the gauge."""
        registry = CollectorRegistry()
        observer = MetricsObserver(transport="memory", address="memory", registry=registry)
        transport: MemoryTransport[str, str] = MemoryTransport("memory")

        def action(request: str, client_address: str, server: object) -> None:
            if request == "bad":
                raise ValueError(request)

        handler: RecordingHandler[str, str] = RecordingHandler(action)
        verifier = MemoryVerifier(verdict=lambda request, client: request != "refused")
        with Server(
            transport=transport,
            acceptor=MemoryAcceptor(),
            handler=handler,
            verifier=verifier,
            dispatcher=InlineDispatcher(),
            error_policy=None,
            observers=[observer],
        ) as server:
            for name in ("ok1", "ok2", "bad", "refused"):
                transport.connect(name, name)
                try:
                    server.handle_request()
                except ValueError:
                    pass
        got = samples(registry)
        duration = "composable_server_connection_duration_seconds_count"
        assert got[key(duration, **MEMORY, error_type="")] == 2
        assert got[key(duration, **MEMORY, error_type="ValueError")] == 1
        assert got[key("composable_server_rejected_connections_total", **MEMORY, reason="verifier")] == 1
        assert got[key("composable_server_active_connections", **MEMORY)] == 0

    @pytest.mark.timeout(5)
    def test_tls_handshakes(self) -> None:
        """With tls=True a handshake is active between request_started and transport_started, then observed."""
        registry = CollectorRegistry()
        observer = MetricsObserver(transport="tls", address="a", tls=True, registry=registry, prefix="x")
        observer.connection_accepted(ConnectionAccepted("c"))
        observer.request_started(RequestStarted("c"))
        labels = {"address": "a", "transport": "tls"}
        assert samples(registry)[key("x_active_tls_handshakes", **labels)] == 1
        observer.transport_started(TransportStarted("c", "TLSTransport", 0.01, "TLSHandshakeError", True))
        got = samples(registry)
        assert got[key("x_active_tls_handshakes", **labels)] == 0
        assert got[key("x_tls_handshake_duration_seconds_count", **labels, error_type="TLSHandshakeError")] == 1
        assert got[key("x_active_connections", **labels)] == 1

    @pytest.mark.timeout(5)
    def test_kept_connection_has_no_second_handshake(self) -> None:
        """The next message of a kept connection (starting=False) starts no handshake, so the gauge does not leak."""
        registry = CollectorRegistry()
        observer = MetricsObserver(transport="tls", address="a", tls=True, registry=registry, prefix="x")
        observer.connection_accepted(ConnectionAccepted("c"))
        observer.request_started(RequestStarted("c"))
        observer.transport_started(TransportStarted("c", "TLSTransport", 0.01, None, True))
        observer.request_finished(RequestFinished("c", 0.02, "ok"))
        observer.request_started(RequestStarted("c", starting=False))
        labels = {"address": "a", "transport": "tls"}
        assert samples(registry)[key("x_active_tls_handshakes", **labels)] == 0


class TestAccessLog:
    @pytest.mark.timeout(5)
    def test_one_line_per_request(self, caplog: pytest.LogCaptureFixture) -> None:
        """Each finished request is one INFO line with client, bytes (``-``: unknown), duration and outcome."""
        log = AccessLog()
        with caplog.at_level(logging.INFO, logger="composable_server.access"):
            log.request_finished(RequestFinished("c0", 0.125, "ok", bytes_in=78, bytes_out=1520))
            log.request_finished(RequestFinished("c1", 0.5, "ok"))
            log.request_finished(RequestFinished("c2", 0.25, "handler_error", "ValueError"))
            log.request_finished(RequestFinished("c3", 1.0, "budget", None, "lifetime"))
            log.connection_refused(ConnectionRefused("c4", "rate_limit", "RateLimitVerifier"))
        assert [record.getMessage() for record in caplog.records] == [
            "c0 in=78 out=1520 0.1250s ok",
            "c1 in=- out=- 0.5000s ok",
            "c2 in=- out=- 0.2500s handler_error ValueError",
            "c3 in=- out=- 1.0000s budget lifetime",
            "c4 refused rate_limit RateLimitVerifier",
        ]

    @pytest.mark.timeout(5)
    def test_silent_when_info_is_off(self, caplog: pytest.LogCaptureFixture) -> None:
        """Below INFO the access log writes nothing."""
        with caplog.at_level(logging.WARNING, logger="composable_server.access"):
            AccessLog().request_finished(RequestFinished("c1", 0.5, "ok"))
        assert caplog.records == []

    def test_wants_bytes(self) -> None:
        """The access log asks the server for byte counts; a group of observers passes that on."""
        assert AccessLog.wants_bytes is True
        assert ObserverGroup([BaseObserver(), AccessLog()]).wants_bytes
        assert not ObserverGroup([BaseObserver()]).wants_bytes


