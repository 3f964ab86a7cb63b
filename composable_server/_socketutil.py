"""Socket helpers shared by transports, acceptors and the server loop.

Everything that turns user input into a socket-level value is checked here,
once, so that a bad address fails with an :class:`AddressError` naming the
value instead of a ``TypeError`` from deep inside ``socket.bind``.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from typing import Final

from .exceptions import AddressError, PortRangeError
from .interfaces import Address

__all__ = (
    "DATAGRAM_SEND_TIMEOUT",
    "FAMILY_NAMES",
    "UNIX_PATH_MAX",
    "Waker",
    "check_inet_address",
    "check_unix_address",
    "family_name",
    "inet_family_for",
    "send_datagram",
)

# sizeof(sockaddr_un.sun_path) on Linux is 108, including the terminating NUL
# for filesystem paths (unix(7)); abstract names may use all 108 bytes.
UNIX_PATH_MAX: Final = 108

FAMILY_NAMES: Final[dict[int, str]] = {
    socket.AF_INET: "AF_INET",
    socket.AF_INET6: "AF_INET6",
    socket.AF_UNIX: "AF_UNIX",
}

# Errors on accept() that mean "this one connection went away", not "the
# listener is broken": skip them and go on (accept(2), "Error handling").
# EMSGSIZE: one datagram was too large and was dropped (DatagramTooLargeError).
ACCEPT_TRANSIENT_ERRNOS: Final = frozenset(
    {errno.ECONNABORTED, errno.EPROTO, errno.EINTR, errno.EAGAIN, errno.EWOULDBLOCK, errno.EMSGSIZE}
)


# How long send_datagram() retries a reply the kernel cannot queue yet.
DATAGRAM_SEND_TIMEOUT: Final = 1.0
# Its backoff between retries: from 1 ms, doubling, at most 50 ms.
_SEND_RETRY_FIRST: Final = 0.001
_SEND_RETRY_MAX: Final = 0.05


def send_datagram(
    sock: socket.socket, data: bytes, address: Address, *, timeout: float = DATAGRAM_SEND_TIMEOUT
) -> bool:
    """Send *data* to *address* as one datagram; return False if it was dropped.

    A blocking socket sends as ``sendto(2)`` does (as stdlib).  On a
    non-blocking one (the native datagram transports), ``EAGAIN`` means the
    kernel cannot queue the datagram right now: the UDP send buffer is full,
    or a Unix datagram peer already holds ``net.unix.max_dgram_qlen``
    (default 10) unread datagrams.  The send is retried with a short backoff
    for up to *timeout* seconds, so a client that sent a burst and reads its
    replies afterwards gets them all; after that the datagram is dropped, as
    a full network queue drops it, so that a client that never reads cannot
    hold a worker (a blocking ``sendto`` would wait for it forever).  The
    wait cannot be a ``poll(POLLOUT)``: an unconnected Unix datagram socket
    polls writable even when its peer's queue is full (``unix_dgram_poll``).

    Raises:
        OSError: any other error from ``sendto(2)``.
    """
    deadline: float | None = None
    delay = _SEND_RETRY_FIRST
    while True:
        try:
            sock.sendto(data, address)
            return True
        except BlockingIOError:
            now = time.monotonic()
            if deadline is None:
                deadline = now + timeout
            if now >= deadline:
                return False
            time.sleep(min(delay, deadline - now))
            delay = min(delay * 2, _SEND_RETRY_MAX)


def family_name(family: object) -> str:
    """A readable name for an address family (``AF_INET6``), or its repr."""
    if isinstance(family, int):
        return FAMILY_NAMES.get(family, f"family {int(family)}")
    return repr(family)


def _shape(value: object) -> str:
    return f"{value!r} ({type(value).__name__})"


def check_port(port: object, address: object, family: int) -> int:
    """Return *port* if it is an int in 0..65535.

    Raises:
        AddressError: *port* is not an int.
        PortRangeError: *port* is outside 0..65535 (an AddressError that is
            also the OverflowError ``socket.bind`` raises for it).
    """
    if isinstance(port, bool) or not isinstance(port, int):
        raise AddressError(
            f"port must be an int in 0..65535, got {_shape(port)} in {address!r}",
            address=address,
            family=family,
        )
    if not 0 <= port <= 65535:
        raise PortRangeError(
            f"port must be in 0..65535, got {port} in {address!r}", address=address, family=family, port=port
        )
    return port


def inet_family_for(address: object) -> socket.AddressFamily:
    """Choose ``AF_INET`` or ``AF_INET6`` from the shape of *address*.

    A 4-tuple, or a host containing ``:`` (an IPv6 literal), is IPv6; any other
    2-tuple is IPv4 (hostnames resolve as IPv4, as in stdlib ``TCPServer``).
    """
    if isinstance(address, tuple):
        if len(address) == 4:
            return socket.AF_INET6
        if len(address) == 2 and isinstance(address[0], str) and ":" in address[0]:
            return socket.AF_INET6
    return socket.AF_INET


def check_inet_address(address: object, family: int) -> tuple[str, int] | tuple[str, int, int, int]:
    """Validate an IP address for *family* and return it unchanged.

    Raises:
        AddressError: not a tuple of the right length, host not a str, port
            not an int in range.
    """
    fname = family_name(family)
    expected = (
        "(host, port)" if family == socket.AF_INET else "(host, port) or (host, port, flowinfo, scope_id)"
    )
    if not isinstance(address, tuple):
        raise AddressError(
            f"expected {expected} for {fname}, got {_shape(address)}", address=address, family=family
        )
    allowed = (2,) if family == socket.AF_INET else (2, 4)
    if len(address) not in allowed:
        raise AddressError(
            f"expected {expected} for {fname}, got a {len(address)}-tuple {address!r}",
            address=address,
            family=family,
        )
    host = address[0]
    if not isinstance(host, str):
        raise AddressError(
            f"host must be a str for {fname}, got {_shape(host)} in {address!r}",
            address=address,
            family=family,
        )
    port = check_port(address[1], address, family)
    if len(address) == 4:
        for name, value in (("flowinfo", address[2]), ("scope_id", address[3])):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise AddressError(
                    f"{name} must be a non-negative int, got {_shape(value)} in {address!r}",
                    address=address,
                    family=family,
                )
        return (host, port, address[2], address[3])
    return (host, port)


def check_unix_address(address: object) -> str | bytes:
    """Validate a Unix socket address: a path (str, bytes or os.PathLike) or a
    Linux abstract name (bytes or str starting with NUL).

    Returns:
        The address as ``str`` (paths) or ``bytes`` (as given).

    Raises:
        AddressError: wrong type, empty, longer than ``sun_path`` allows,
            or not encodable as a file name.
    """
    if isinstance(address, os.PathLike):
        address = os.fspath(address)
    if not isinstance(address, (str, bytes)):
        raise AddressError(
            f"expected a path (str, bytes or os.PathLike) for AF_UNIX, got {_shape(address)}",
            address=address,
            family=socket.AF_UNIX,
        )
    try:
        raw = os.fsencode(address)
    except UnicodeEncodeError as exc:  # a lone surrogate: no file name can hold it
        raise AddressError(
            f"AF_UNIX path cannot be encoded for the file system: {address!r} ({exc.reason})",
            address=address,
            family=socket.AF_UNIX,
        ) from exc
    if not raw:
        raise AddressError("AF_UNIX path must not be empty", address=address, family=socket.AF_UNIX)
    abstract = raw[0] == 0
    limit = UNIX_PATH_MAX if abstract else UNIX_PATH_MAX - 1
    if len(raw) > limit:
        raise AddressError(
            f"AF_UNIX path is {len(raw)} bytes, the limit is {limit}: {address!r}",
            address=address,
            family=socket.AF_UNIX,
        )
    if not abstract and 0 in raw:
        raise AddressError(
            f"AF_UNIX path must not contain NUL bytes: {address!r}", address=address, family=socket.AF_UNIX
        )
    return address


class Waker:
    """A self-pipe that makes a waiting ``select``/``poll`` return at once.

    ``wake()`` may be called from any thread (and from a signal handler); the
    waiting side calls ``drain()`` once it has woken.  A pipe rather than a
    socketpair: it is cheaper and keeps the in-memory unit tests free of sockets.
    """

    __slots__ = ("_r", "_w")

    def __init__(self) -> None:
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def fileno(self) -> int:
        """The read end, to register with a selector."""
        return self._r

    def wake(self) -> None:
        """Make the read end readable.  Never blocks, never raises."""
        try:
            os.write(self._w, b"\0")
        except OSError:
            # Pipe full (a wake-up is already pending) or closed: either way
            # there is nothing more to do.
            pass

    def drain(self) -> None:
        """Consume pending wake-ups."""
        try:
            while os.read(self._r, 4096):
                pass
        except OSError:
            pass

    def close(self) -> None:
        """Close both ends.  Idempotent."""
        for fd in (self._r, self._w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._r = self._w = -1
