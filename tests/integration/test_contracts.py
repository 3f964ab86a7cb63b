"""The Transport and Acceptor contract suites against every real transport and
acceptor, on loopback and Unix sockets (the unit tests run the same suites on
the in-memory fakes, so fakes and real components cannot drift apart)."""

from __future__ import annotations

import functools
import itertools
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from socket import socket as Socket

import pytest

from composable_server import (
    DatagramAcceptor,
    DatagramRequest,
    InetAddress,
    StreamAcceptor,
    TCPTransport,
    Transport,
    UDPTransport,
    UnixAddress,
    UnixDatagramTransport,
    UnixStreamTransport,
)
from composable_server.testing import check_acceptor, check_transport

pytestmark = pytest.mark.timeout(30)

_counter = itertools.count()


@functools.cache
def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


HOSTS = [
    pytest.param("127.0.0.1", id="ipv4"),
    pytest.param("::1", id="ipv6"),
]


def _need(host: str) -> None:
    if ":" in host and not _ipv6_loopback():
        pytest.skip("IPv6 loopback (::1) is not available")


@pytest.fixture
def unix_dir(tmp_path: Path) -> Path:
    """A directory whose socket paths fit in sun_path."""
    if len(str(tmp_path / "contract-000.sock")) > 100:
        pytest.skip(f"tmp_path is too long for Unix socket paths: {tmp_path}")
    return tmp_path


def _unix_address(directory: Path, abstract: bool) -> UnixAddress:
    n = next(_counter)
    if abstract:
        return f"\0composable-contract-{os.getpid()}-{n}".encode()
    return str(directory / f"contract-{n}.sock")


# -- clients: each makes one request pending while the block runs ----------------


@contextmanager
def _stream_client(transport: Transport[Socket, InetAddress] | Transport[Socket, UnixAddress]) -> Iterator[Socket]:
    listening = transport.socket
    with socket.socket(listening.family, socket.SOCK_STREAM) as client:
        client.connect(transport.server_address)
        client.sendall(b"ping")
        yield client


@contextmanager
def _datagram_client(
    transport: Transport[DatagramRequest, InetAddress] | Transport[DatagramRequest, UnixAddress],
) -> Iterator[Socket]:
    listening = transport.socket
    with socket.socket(listening.family, socket.SOCK_DGRAM) as client:
        client.sendto(b"ping", transport.server_address)
        yield client


def _tcp_client(transport: Transport[Socket, InetAddress]) -> AbstractContextManager[object]:
    return _stream_client(transport)


def _udp_client(transport: Transport[DatagramRequest, InetAddress]) -> AbstractContextManager[object]:
    return _datagram_client(transport)


def _unix_stream_client(transport: Transport[Socket, UnixAddress]) -> AbstractContextManager[object]:
    return _stream_client(transport)


def _unix_datagram_client(transport: Transport[DatagramRequest, UnixAddress]) -> AbstractContextManager[object]:
    return _datagram_client(transport)


class TestTCPTransport:
    @pytest.mark.parametrize("host", HOSTS)
    def test_transport_contract(self, host: str) -> None:
        """TCPTransport on IPv4 and IPv6 loopback keeps the Transport contract."""
        _need(host)
        check_transport(lambda: TCPTransport((host, 0)))

    @pytest.mark.parametrize("host", HOSTS)
    def test_server_address_resolves_port_zero(self, host: str) -> None:
        """Before bind server_address is the requested address; after it, the kernel's (port 0 resolved)."""
        _need(host)
        transport = TCPTransport((host, 0))
        try:
            assert transport.server_address == (host, 0)
            transport.bind()
            assert transport.server_address[0] == host
            assert transport.server_address[1] != 0
        finally:
            transport.close()


class TestStreamAcceptor:
    @pytest.mark.parametrize("host", HOSTS)
    def test_acceptor_contract_on_tcp(self, host: str) -> None:
        """StreamAcceptor on a TCPTransport keeps the Acceptor contract."""
        _need(host)
        make: Callable[[], Transport[Socket, InetAddress]] = lambda: TCPTransport((host, 0))  # noqa: E731
        check_acceptor(make, StreamAcceptor, _tcp_client)

    @pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
    def test_acceptor_contract_on_unix_stream(self, unix_dir: Path, abstract: bool) -> None:
        """StreamAcceptor on a UnixStreamTransport (path and abstract name) keeps the Acceptor contract."""
        make: Callable[[], Transport[Socket, UnixAddress]] = lambda: UnixStreamTransport(  # noqa: E731
            _unix_address(unix_dir, abstract)
        )
        check_acceptor(make, StreamAcceptor, _unix_stream_client)


class TestUDPTransport:
    @pytest.mark.parametrize("host", HOSTS)
    def test_transport_contract(self, host: str) -> None:
        """UDPTransport on IPv4 and IPv6 loopback keeps the Transport contract."""
        _need(host)
        check_transport(lambda: UDPTransport((host, 0)))


class TestDatagramAcceptor:
    @pytest.mark.parametrize("host", HOSTS)
    def test_acceptor_contract_on_udp(self, host: str) -> None:
        """DatagramAcceptor on a UDPTransport keeps the Acceptor contract."""
        _need(host)
        make: Callable[[], Transport[DatagramRequest, InetAddress]] = lambda: UDPTransport((host, 0))  # noqa: E731
        check_acceptor(make, DatagramAcceptor, _udp_client)

    @pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
    def test_acceptor_contract_on_unix_datagram(self, unix_dir: Path, abstract: bool) -> None:
        """DatagramAcceptor on a UnixDatagramTransport (path and abstract name) keeps the Acceptor contract."""
        make: Callable[[], Transport[DatagramRequest, UnixAddress]] = lambda: UnixDatagramTransport(  # noqa: E731
            _unix_address(unix_dir, abstract)
        )
        check_acceptor(make, DatagramAcceptor, _unix_datagram_client)


class TestUnixStreamTransport:
    @pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
    def test_transport_contract(self, unix_dir: Path, abstract: bool) -> None:
        """UnixStreamTransport on a path and on an abstract name keeps the Transport contract."""
        check_transport(lambda: UnixStreamTransport(_unix_address(unix_dir, abstract)))

    def test_close_removes_the_socket_file(self, unix_dir: Path) -> None:
        """Closing a bound UnixStreamTransport removes the socket file it created."""
        path = _unix_address(unix_dir, abstract=False)
        assert isinstance(path, str)
        transport = UnixStreamTransport(path)
        try:
            transport.bind()
            assert os.path.exists(path)
        finally:
            transport.close()
        assert not os.path.exists(path)


class TestUnixDatagramTransport:
    @pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
    def test_transport_contract(self, unix_dir: Path, abstract: bool) -> None:
        """UnixDatagramTransport on a path and on an abstract name keeps the Transport contract."""
        check_transport(lambda: UnixDatagramTransport(_unix_address(unix_dir, abstract)))
