"""composable_server.metrics on real sockets: the accept-queue depth, and a --metrics scrape."""

from __future__ import annotations

import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

import pytest
import trustme
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from composable_server import Server, StreamAcceptor, TCPTransport, ThreadingDispatcher, TLSTransport
from composable_server.interfaces import Transport, TransportStarted
from composable_server.metrics import MetricsObserver, QueueDepthCollector, accept_queue_depth
from composable_server.policies import LoggingErrorPolicy
from composable_server.proxy import ProxyProtocolTransport
from composable_server.testing import RecordingObserver

from .test_cli import ServeProcess

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


class TestQueueDepth:
    @pytest.mark.timeout(10)
    def test_depth_counts_unaccepted_connections(self) -> None:
        """The accept-queue depth of a listening socket is the connections not yet accepted."""
        listener = socket.create_server(("127.0.0.1", 0), backlog=8)
        clients = []
        try:
            if accept_queue_depth(listener) is None:
                pytest.skip("TCP_INFO on a listening socket is Linux-only")
            assert accept_queue_depth(listener) == 0
            for _ in range(3):
                clients.append(socket.create_connection(listener.getsockname(), timeout=WAIT))
            registry = CollectorRegistry()
            registry.register(QueueDepthCollector(listener, transport="tcp", address="l"))
            assert samples(registry)[key("composable_server_queued_connections", address="l", transport="tcp")] == 3
            listener.accept()[0].close()
            assert accept_queue_depth(listener) == 2
        finally:
            for client in clients:
                client.close()
            listener.close()

    @pytest.mark.timeout(5)
    def test_not_a_tcp_listener(self) -> None:
        """A Unix or closed socket has no readable depth, and the collector then reports no sample."""
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            assert accept_queue_depth(unix) is None
        finally:
            unix.close()
        registry = CollectorRegistry()
        registry.register(QueueDepthCollector(lambda: None, transport="tcp", address="l"))
        assert not [key for key in samples(registry) if key[0].endswith("queued_connections")]


METRICS_LINE: Final = re.compile(r"metrics on http://(\S+)/metrics")


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET *url* and parse it with prometheus_client's own text parser."""
    with urllib.request.urlopen(url, timeout=WAIT) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def upper(address: tuple[str, int], payload: bytes) -> bytes:
    """One request to the upper service; the reply up to EOF."""
    with socket.create_connection(address, timeout=WAIT) as sock:
        sock.sendall(payload)
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
        return b"".join(chunks)


class TestCommandLine:
    @pytest.mark.timeout(60)
    @pytest.mark.parametrize("dispatch", ["threading", "prefork"])
    def test_scrape_counts_the_requests_sent(self, dispatch: str) -> None:
        """serve --metrics: a scrape's request count equals the requests sent, also summed over prefork workers."""
        extra = ["--workers", "2"] if dispatch == "prefork" else []
        sent = 7
        with serve("--port", "0", "--dispatch", dispatch, *extra, "--metrics", "127.0.0.1:0", "--access-log") as proc:
            metrics_address = proc.wait_for(METRICS_LINE).group(1)
            _, address = proc.address()
            assert isinstance(address, tuple)
            for n in range(sent):
                assert upper(address, b"hello %d\n" % n) == b"HELLO %d\n" % n
            url = f"http://{metrics_address}/metrics"
            labels = {"transport": "tcp", "address": f"{address[0]}:{address[1]}"}
            count = key("composable_server_connection_duration_seconds_count", **labels, error_type="")
            active = key("composable_server_active_connections", **labels)
            # The count grows just after the client saw EOF: poll, bounded.
            deadline = time.monotonic() + WAIT
            while (got := scrape(url)).get(count, 0) < sent and time.monotonic() < deadline:
                time.sleep(0.05)
            assert got[count] == sent
            assert got[active] == 0
            assert got[key("composable_server_queued_connections", **labels)] == 0
            with pytest.raises(urllib.error.HTTPError) as missing:
                urllib.request.urlopen(f"http://{metrics_address}/other", timeout=WAIT)
            assert missing.value.code == 404
            missing.value.close()
            assert proc.stop() == 0
        # Bytes in: the request line, as TCP_INFO counts it.  Out is what the
        # client acknowledged when the handler returned (its ACK may come later).
        logged = [re.search(r" in=(\d+) out=(\d+) .* ok$", line.rstrip()) for line in proc.lines]
        counts = [(int(found[1]), int(found[2])) for found in logged if found is not None]
        assert len(counts) == sent
        assert all(bytes_in == len(b"hello 0\n") and 0 <= bytes_out <= bytes_in for bytes_in, bytes_out in counts)


@contextmanager
def serve(*args: str) -> Iterator[ServeProcess]:
    """Run ``serve *args``; kill and reap it on the way out."""
    proc = ServeProcess(["serve", "--log-level", "info", *args])
    try:
        yield proc
    finally:
        proc.close()


def _echo_line(request: socket.socket, client_address: object, server: object) -> None:
    """Read one line, send it back."""
    with request.makefile("rb") as reader:
        request.sendall(reader.readline())


def _proxy_over_tls(context: ssl.SSLContext) -> Transport[socket.socket, Any]:
    return ProxyProtocolTransport(TLSTransport(TCPTransport(("127.0.0.1", 0)), context), mode="v1")


class TestTLSHandshakesBehindProxy:
    @pytest.mark.timeout(30)
    def test_active_tls_handshakes(self) -> None:
        """With PROXY over TLS (as the command line layers them), a handshake
        in progress counts 1 (from the PROXY header on), then 0 once it ended, well or not."""
        ca = trustme.CA()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(context)
        client_context = ssl.create_default_context()
        ca.configure_trust(client_context)
        registry = CollectorRegistry()
        recorder = RecordingObserver()
        observer = MetricsObserver(transport="tls", address="test", tls=True, registry=registry)
        server: Server[socket.socket, Any] = Server(
            transport=_proxy_over_tls(context),
            acceptor=StreamAcceptor(),
            handler=_echo_line,
            dispatcher=ThreadingDispatcher(),
            error_policy=LoggingErrorPolicy(),
            observers=[observer, recorder],
        )
        labels = {"transport": "tls", "address": "test"}
        header = b"PROXY TCP4 192.0.2.1 192.0.2.2 1234 443\r\n"

        def value(name: str, **extra: str) -> float | None:
            return registry.get_sample_value(f"composable_server_{name}", {**labels, **extra})

        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        try:
            address = server.server_address
            with socket.create_connection(address, timeout=WAIT) as raw:
                raw.sendall(header)  # the PROXY header, then silence: the handshake is under way
                assert recorder.wait_for("request_started", 1, WAIT)
                assert value("active_tls_handshakes") == 1
                with client_context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                    tls.sendall(b"hello\n")
                    assert tls.recv(100) == b"hello\n"
                    assert value("active_tls_handshakes") == 0
            with socket.create_connection(address, timeout=WAIT) as raw:
                raw.sendall(header + b"not a TLS client hello\r\n\r\n")
                assert recorder.wait_for("request_finished", 2, WAIT), recorder.events
            assert recorder.wait_for("request_finished", 2, WAIT), recorder.events
            assert value("active_tls_handshakes") == 0
            assert value("tls_handshake_duration_seconds_count", error_type="") == 1
            failed = [event for event in recorder.of(TransportStarted) if event.error is not None]
            assert len(failed) == 1 and all(event.tls for event in recorder.of(TransportStarted))
            assert value("tls_handshake_duration_seconds_count", error_type=failed[0].error or "") == 1
        finally:
            server.shutdown()
            server.server_close()
            thread.join(WAIT)
