"""The server lifecycle on real sockets: serve_forever, shutdown, handle_request,
server_close, binding, and the context manager."""

from __future__ import annotations

import errno
import os
import socket
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from composable_server import (
    BindError,
    DatagramAcceptor,
    FixedTimeout,
    Server,
    ServerClosedError,
    ServerStateError,
    StreamAcceptor,
    TCPTransport,
    UDPTransport,
    UnixStreamTransport,
)

from ._support import (
    CLIENT_TIMEOUT,
    AnyServer,
    Background,
    Dispatch,
    Family,
    RecordingErrorPolicy,
    Responder,
    ServerKind,
    ipv6_available,
    open_fds,
    datagram_handler,
    describe_fds,
    running,
    stream_handler,
)


MakeKind = Callable[[Family, Dispatch], ServerKind]


def _serve_in_thread(server: AnyServer, poll_interval: float = 0.5) -> Background[None]:
    return Background(lambda: server.serve_forever(poll_interval))


class TestShutdown:
    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("family", list(Family), ids=[f.value for f in Family])
    def test_shutdown_is_prompt(
        self,
        family: Family,
        make_kind: MakeKind,
        responder: Responder,
        record_property: Callable[[str, object], None],
    ) -> None:
        """shutdown() returns well within poll_interval=0.5 (the loop is woken, not polled)."""
        server_kind = make_kind(family, Dispatch.SYNC)
        latencies: list[float] = []
        for _ in range(5):
            with server_kind.server(responder) as server:
                serving = _serve_in_thread(server, poll_interval=0.5)
                # One answered request proves the loop is up and back in poll().
                assert server_kind.request(server, b"up") == b"UP"
                started = time.perf_counter()
                server.shutdown()
                latencies.append(time.perf_counter() - started)
                serving.result()
        median = statistics.median(latencies)
        record_property("shutdown_latency_median_s", median)
        print(f"\nshutdown latency {server_kind.family.value}: median {median * 1e3:.3f} ms, "
              f"max {max(latencies) * 1e3:.3f} ms (poll_interval 500 ms)")
        assert median < 0.1

    @pytest.mark.timeout(10)
    def test_shutdown_before_serve_forever(self, server_kind: ServerKind, responder: Responder) -> None:
        """shutdown() before serve_forever returns at once and makes the next
        serve_forever return at once; the one after that serves normally."""
        with server_kind.server(responder) as server:
            started = time.perf_counter()
            server.shutdown()
            assert time.perf_counter() - started < 1.0
            _serve_in_thread(server).result(CLIENT_TIMEOUT)
            # The shutdown request was consumed: serving works again.
            with running(server):
                assert server_kind.request(server, b"again") == b"AGAIN"

    @pytest.mark.timeout(10)
    def test_shutdown_from_serving_thread_raises(self, make_kind: MakeKind) -> None:
        """shutdown() called by a handler in the serving thread raises
        ServerStateError (instead of deadlocking) and the server goes on."""

        def respond(data: bytes) -> bytes:
            if data == b"stop":
                server.shutdown()
            return data.upper()

        policy = RecordingErrorPolicy()
        kind = make_kind(Family.TCP4, Dispatch.SYNC)
        with running(kind.server(respond, error_policy=policy)) as server:
            assert kind.request(server, b"stop") == b""
            assert kind.request(server, b"still here") == b"STILL HERE"
        assert len(policy.errors) == 1
        exc = policy.errors[0][1]
        assert isinstance(exc, ServerStateError)
        assert "deadlock" in str(exc)

    @pytest.mark.timeout(10)
    def test_shutdown_twice(self, make_kind: MakeKind, responder: Responder) -> None:
        """A second shutdown() after the loop stopped returns at once."""
        kind = make_kind(Family.TCP4, Dispatch.THREADING)
        with kind.server(responder) as server:
            serving = _serve_in_thread(server)
            assert kind.request(server, b"x") == b"X"
            server.shutdown()
            serving.result()
            server.shutdown()

    @pytest.mark.timeout(10)
    def test_serve_forever_twice_at_once(self, make_kind: MakeKind, responder: Responder) -> None:
        """A second serve_forever while one runs raises ServerStateError."""
        kind = make_kind(Family.TCP4, Dispatch.SYNC)
        with running(kind.server(responder)) as server:
            assert kind.request(server, b"up") == b"UP"  # the first loop is running
            with pytest.raises(ServerStateError):
                server.serve_forever()
            assert kind.request(server, b"still") == b"STILL"

    @pytest.mark.timeout(10)
    def test_server_close_stops_a_running_loop(self, server_kind: ServerKind, responder: Responder) -> None:
        """server_close() from another thread stops serve_forever cleanly and
        releases every descriptor."""
        fds = open_fds()
        server = server_kind.server(responder)
        serving = _serve_in_thread(server)
        assert server_kind.request(server, b"up") == b"UP"
        server.server_close()
        serving.result()
        assert server.fileno() == -1
        assert describe_fds(open_fds() - fds) == []


class TestClosedServer:
    @pytest.mark.timeout(10)
    def test_context_manager(self, server_kind: ServerKind, responder: Responder) -> None:
        """The server is its own context manager and is closed on exit."""
        built = server_kind.server(responder)
        with built as server:
            assert server is built
            assert server.fileno() >= 0
        assert server.fileno() == -1

    @pytest.mark.timeout(10)
    def test_closed_server_refuses_to_serve(self, make_kind: MakeKind, responder: Responder) -> None:
        """serve_forever and handle_request on a closed server raise ServerClosedError."""
        kind = make_kind(Family.TCP4, Dispatch.SYNC)
        server = kind.server(responder)
        server.server_close()
        with pytest.raises(ServerClosedError):
            server.serve_forever()
        with pytest.raises(ServerClosedError):
            server.handle_request()


class TestHandleRequest:
    @pytest.mark.timeout(10)
    def test_handles_one_request(self, server_kind: ServerKind, responder: Responder) -> None:
        """handle_request() serves exactly one request and returns."""
        with server_kind.server(responder) as server:
            client = Background(lambda: server_kind.request(server, b"one"))
            server.handle_request()
            assert client.result() == b"ONE"

    @pytest.mark.timeout(10)
    def test_times_out(self, server_kind: ServerKind, responder: Responder) -> None:
        """With a FixedTimeout and no client, handle_request() calls the
        timeout callback after about the timeout and returns."""
        timed_out = threading.Event()
        policy = FixedTimeout(0.05, on_timeout=timed_out.set)
        with server_kind.server(responder, timeout_policy=policy) as server:
            started = time.monotonic()
            server.handle_request()
            elapsed = time.monotonic() - started
        assert timed_out.is_set()
        assert 0.05 <= elapsed < 2.0


class TestBinding:
    @pytest.mark.timeout(10)
    def test_server_address_is_resolved(self, server_kind: ServerKind, responder: Responder) -> None:
        """server_address is the bound address: port 0 resolved, IPv6 as a 4-tuple."""
        with server_kind.server(responder) as server:
            address = server.server_address
            sock_name = server.transport.socket.getsockname()
            assert address == sock_name
            family = server_kind.family
            if family.is_unix:
                assert isinstance(address, str)
                assert address.startswith(str(server_kind.directory))
            elif family.is_ipv6:
                host, port, flowinfo, scope_id = address
                assert (host, flowinfo, scope_id) == ("::1", 0, 0)
                assert port > 0
            else:
                host, port = address
                assert host == "127.0.0.1"
                assert port > 0

    @pytest.mark.timeout(10)
    def test_bind_and_activate_false(self, server_kind: ServerKind, responder: Responder) -> None:
        """With bind_and_activate=False nothing is bound until server_bind()
        and server_activate(); then the server answers."""
        with server_kind.server(responder, bind_and_activate=False) as server:
            requested = server.server_address
            if server_kind.family.is_unix:
                assert not os.path.exists(requested)
            else:
                assert requested[1] == 0
            server.server_bind()
            assert server.server_address == server.transport.socket.getsockname()
            server.server_activate()
            with running(server):
                assert server_kind.request(server, b"late") == b"LATE"

    @pytest.mark.timeout(10)
    @pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
    @pytest.mark.parametrize("sock_type", [socket.SOCK_STREAM, socket.SOCK_DGRAM], ids=["tcp", "udp"])
    def test_bind_error_on_taken_port(self, host: str, sock_type: socket.SocketKind) -> None:
        """Binding a taken port raises BindError (an OSError, EADDRINUSE) naming
        the address, and the failed server closes its socket."""
        if host == "::1" and not ipv6_available():
            pytest.skip("IPv6 loopback (::1) is not available")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, sock_type) as holder:
            holder.bind((host, 0))
            if sock_type == socket.SOCK_STREAM:
                holder.listen()
            port = holder.getsockname()[1]
            transport: TCPTransport | UDPTransport
            with pytest.raises(BindError) as info:
                if sock_type == socket.SOCK_STREAM:
                    transport = TCPTransport((host, port))
                    Server(transport=transport, acceptor=StreamAcceptor(), handler=stream_handler(bytes.upper))
                else:
                    transport = UDPTransport((host, port))
                    Server(transport=transport, acceptor=DatagramAcceptor(), handler=datagram_handler(bytes.upper))
            assert isinstance(info.value, OSError)
            assert info.value.errno == errno.EADDRINUSE
            assert info.value.address == (host, port)
            assert repr((host, port)) in str(info.value)
            assert transport.fileno() == -1

    @pytest.mark.timeout(10)
    def test_bind_error_on_existing_unix_socket_keeps_the_file(self, short_tmp_path: Path) -> None:
        """Binding a Unix path held by another server raises BindError and
        leaves that server's socket file in place."""
        path = str(short_tmp_path / "taken.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as holder:
            holder.bind(path)
            holder.listen()
            transport = UnixStreamTransport(path)
            with pytest.raises(BindError) as info:
                Server(transport=transport, acceptor=StreamAcceptor(), handler=stream_handler(bytes.upper))
            assert info.value.errno == errno.EADDRINUSE
            assert path in str(info.value)
            assert transport.fileno() == -1
            assert os.path.exists(path)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.connect(path)  # the holder still listens there
