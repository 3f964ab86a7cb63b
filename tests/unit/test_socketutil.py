"""Address checks, the Waker self-pipe and send_datagram (composable_server._socketutil)."""

from __future__ import annotations

import errno
import select
import socket
import time
from pathlib import Path
from typing import cast

import pytest

from composable_server import AddressError, PortRangeError
from composable_server._socketutil import (
    UNIX_PATH_MAX,
    Waker,
    check_inet_address,
    check_unix_address,
    family_name,
    inet_family_for,
    send_datagram,
)


def _readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class TestCheckInetAddress:
    @pytest.mark.timeout(5)
    @pytest.mark.parametrize(
        ("address", "family"),
        [
            (("127.0.0.1", 0), socket.AF_INET),
            (("localhost", 65535), socket.AF_INET),
            (("::1", 8080), socket.AF_INET6),
            (("::1", 8080, 0, 0), socket.AF_INET6),
            (("fe80::1", 1, 5, 2), socket.AF_INET6),
        ],
    )
    def test_valid_addresses_pass_unchanged(self, address: tuple[object, ...], family: int) -> None:
        """A well-formed address is returned unchanged."""
        assert check_inet_address(address, family) == address

    @pytest.mark.timeout(5)
    @pytest.mark.parametrize(
        ("address", "family", "fragment"),
        [
            ("127.0.0.1:80", socket.AF_INET, "expected (host, port) for AF_INET, got '127.0.0.1:80' (str)"),
            (["127.0.0.1", 80], socket.AF_INET, "(list)"),
            (("127.0.0.1",), socket.AF_INET, "1-tuple"),
            (("::1", 80, 0, 0), socket.AF_INET, "4-tuple"),
            (("::1", 80, 0), socket.AF_INET6, "3-tuple"),
            ((b"127.0.0.1", 80), socket.AF_INET, "host must be a str for AF_INET, got b'127.0.0.1' (bytes)"),
            (("127.0.0.1", "80"), socket.AF_INET, "got '80' (str)"),
            (("127.0.0.1", True), socket.AF_INET, "got True (bool)"),
            (("127.0.0.1", -1), socket.AF_INET, "got -1"),
            (("127.0.0.1", 65536), socket.AF_INET, "got 65536"),
            (("127.0.0.1", 8.0), socket.AF_INET, "got 8.0 (float)"),
            (("::1", 80, -1, 0), socket.AF_INET6, "flowinfo must be a non-negative int"),
            (("::1", 80, 0, "eth0"), socket.AF_INET6, "scope_id must be a non-negative int, got 'eth0' (str)"),
        ],
    )
    def test_bad_addresses_name_the_value(self, address: object, family: int, fragment: str) -> None:
        """A malformed address raises AddressError whose message names the value and what was expected."""
        with pytest.raises(AddressError) as info:
            check_inet_address(address, family)
        assert fragment in str(info.value)
        assert info.value.address == address
        assert info.value.family == family

    @pytest.mark.timeout(5)
    def test_port_error_names_the_whole_address(self) -> None:
        """A bad port message also shows the address it came in."""
        with pytest.raises(AddressError, match=r"in \('127\.0\.0\.1', 70000\)"):
            check_inet_address(("127.0.0.1", 70000), socket.AF_INET)

    @pytest.mark.timeout(5)
    @pytest.mark.parametrize("port", [-1, 65536])
    def test_out_of_range_port_is_overflow_error(self, port: int) -> None:
        """A port outside 0..65535 raises PortRangeError, an OverflowError as
        from ``socket.bind`` (CPython's test_tcpserver_bind_leak expects it)."""
        with pytest.raises(OverflowError) as info:
            check_inet_address(("127.0.0.1", port), socket.AF_INET)
        assert isinstance(info.value, PortRangeError)
        assert info.value.port == port
        assert f"port must be in 0..65535, got {port}" in str(info.value)

    @pytest.mark.timeout(5)
    def test_address_error_is_value_error(self) -> None:
        """Callers catching ValueError catch a bad address."""
        with pytest.raises(ValueError):
            check_inet_address(("127.0.0.1", "http"), socket.AF_INET)


class TestInetFamilyFor:
    @pytest.mark.timeout(5)
    @pytest.mark.parametrize(
        ("address", "family"),
        [
            (("127.0.0.1", 0), socket.AF_INET),
            (("localhost", 0), socket.AF_INET),
            (("", 0), socket.AF_INET),
            (("::1", 0), socket.AF_INET6),
            (("::", 0), socket.AF_INET6),
            (("fe80::1", 0, 0, 1), socket.AF_INET6),
            ("not a tuple", socket.AF_INET),
        ],
    )
    def test_family_from_shape(self, address: object, family: socket.AddressFamily) -> None:
        """IPv6 is chosen for 4-tuples and IPv6 literals, IPv4 otherwise."""
        assert inet_family_for(address) == family


class TestFamilyName:
    @pytest.mark.timeout(5)
    def test_names(self) -> None:
        """Known families get their constant name, others a readable fallback."""
        assert family_name(socket.AF_INET6) == "AF_INET6"
        assert family_name(socket.AF_UNIX) == "AF_UNIX"
        assert family_name(12345) == "family 12345"
        assert family_name("x") == "'x'"


class TestCheckUnixAddress:
    @pytest.mark.timeout(5)
    @pytest.mark.parametrize(
        "address",
        ["/tmp/server.sock", b"/tmp/server.sock", "relative.sock", "a" * (UNIX_PATH_MAX - 1), b"\0abstract",
         b"\0" + b"a" * (UNIX_PATH_MAX - 1), "\0abstract-str"],
    )
    def test_valid_paths_pass(self, address: str | bytes) -> None:
        """Paths up to 107 bytes and abstract names up to 108 bytes are accepted unchanged."""
        assert check_unix_address(address) == address

    @pytest.mark.timeout(5)
    def test_pathlike_becomes_str(self, tmp_path: Path) -> None:
        """An os.PathLike is accepted and returned as its str path."""
        path = tmp_path / "s.sock"
        assert check_unix_address(path) == str(path)

    @pytest.mark.timeout(5)
    @pytest.mark.parametrize(
        ("address", "fragment"),
        [
            ("a" * UNIX_PATH_MAX, f"AF_UNIX path is {UNIX_PATH_MAX} bytes, the limit is {UNIX_PATH_MAX - 1}"),
            (b"\0" + b"a" * UNIX_PATH_MAX, f"is {UNIX_PATH_MAX + 1} bytes, the limit is {UNIX_PATH_MAX}"),
            ("é" * 54, "108 bytes"),  # 54 characters, 108 bytes in UTF-8: the limit is in bytes
            ("/tmp/a\0b", "must not contain NUL bytes: '/tmp/a\\x00b'"),
            ("", "must not be empty"),
            (b"", "must not be empty"),
            (("127.0.0.1", 80), "expected a path (str, bytes or os.PathLike) for AF_UNIX, got ('127.0.0.1', 80) (tuple)"),
            (42, "got 42 (int)"),
        ],
    )
    def test_bad_paths_name_the_value(self, address: object, fragment: str) -> None:
        """A bad Unix address raises AddressError naming the value, the limit or the expected type."""
        with pytest.raises(AddressError) as info:
            check_unix_address(address)
        assert fragment in str(info.value)
        assert info.value.family == socket.AF_UNIX


class TestWaker:
    @pytest.mark.timeout(5)
    def test_wake_makes_readable_and_drain_clears(self) -> None:
        """wake() makes the descriptor readable; drain() consumes every pending wake-up."""
        waker = Waker()
        try:
            assert not _readable(waker.fileno())
            waker.wake()
            waker.wake()
            assert _readable(waker.fileno())
            waker.drain()
            assert not _readable(waker.fileno())
        finally:
            waker.close()

    @pytest.mark.timeout(10)
    def test_wake_never_blocks_when_pipe_full(self) -> None:
        """wake() returns even when the pipe buffer is full."""
        waker = Waker()
        try:
            for _ in range(70_000):  # more than the default 64 KiB pipe buffer
                waker.wake()
            assert _readable(waker.fileno())
            waker.drain()
            assert not _readable(waker.fileno())
        finally:
            waker.close()

    @pytest.mark.timeout(5)
    def test_close_is_idempotent_and_silences_wake(self) -> None:
        """close() twice is fine; wake() and drain() after close do not raise; fileno() is -1."""
        waker = Waker()
        waker.close()
        waker.close()
        waker.wake()
        waker.drain()
        assert waker.fileno() == -1


class FullQueueSocket:
    """Stands in for a non-blocking datagram socket: ``sendto`` fails with
    EAGAIN for its first *busy* calls (None: always), then sends."""

    def __init__(self, busy: int | None, error: OSError | None = None) -> None:
        self.busy = busy
        self.error = error
        self.calls = 0
        self.sent: list[tuple[bytes, object]] = []

    def sendto(self, data: bytes, address: object) -> int:
        self.calls += 1
        if self.error is not None:
            raise self.error
        if self.busy is None or self.calls <= self.busy:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        self.sent.append((data, address))
        return len(data)


class TestSendDatagram:
    @pytest.mark.timeout(5)
    def test_sends_at_once_when_the_queue_has_room(self) -> None:
        """A datagram the kernel takes is sent with one sendto; True."""
        sock = FullQueueSocket(busy=0)
        assert send_datagram(cast(socket.socket, sock), b"hi", ("127.0.0.1", 9)) is True
        assert (sock.calls, sock.sent) == (1, [(b"hi", ("127.0.0.1", 9))])

    @pytest.mark.timeout(5)
    def test_retries_while_the_queue_is_full(self) -> None:
        """EAGAIN is retried until the kernel takes the datagram, within the timeout."""
        sock = FullQueueSocket(busy=3)
        assert send_datagram(cast(socket.socket, sock), b"hi", "/tmp/c.sock", timeout=4.0) is True
        assert (sock.calls, sock.sent) == (4, [(b"hi", "/tmp/c.sock")])

    @pytest.mark.timeout(5)
    def test_drops_after_the_timeout(self) -> None:
        """A queue still full at the timeout: the datagram is dropped (False), after a bounded wait."""
        sock = FullQueueSocket(busy=None)
        started = time.monotonic()
        assert send_datagram(cast(socket.socket, sock), b"hi", "/tmp/c.sock", timeout=0.2) is False
        assert 0.2 <= time.monotonic() - started < 2.0
        assert sock.sent == [] and sock.calls > 1

    @pytest.mark.timeout(5)
    def test_other_errors_propagate(self) -> None:
        """An error other than EAGAIN is the caller's (no retry)."""
        sock = FullQueueSocket(busy=0, error=ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
        with pytest.raises(ConnectionRefusedError):
            send_datagram(cast(socket.socket, sock), b"hi", "/tmp/c.sock")
        assert sock.calls == 1
