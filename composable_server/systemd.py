"""systemd integration, without a dependency: socket activation and sd_notify.

Socket activation (``sd_listen_fds(3)``)
----------------------------------------

A service started by a ``.socket`` unit (or by ``systemd-socket-activate``)
inherits its listening sockets from fd 3 on, described by three variables:

* ``LISTEN_PID``: the pid they are meant for.  It must be ours: a variable
  inherited from a parent that was activated itself names the parent, and
  taking its descriptors would steal whatever fd 3 happens to be here
  (cheroot accepts any ``LISTEN_PID``; systemd's own ``sd_listen_fds`` does not);
* ``LISTEN_FDS``: how many, from ``SD_LISTEN_FDS_START`` (3) on;
* ``LISTEN_FDNAMES``: their names, colon-separated (``FileDescriptorName=``,
  ``--fdname``).  Optional: a bare ``systemd-socket-activate`` sets none, and
  the sockets are then known by position (Twisted finds none in that case).

:func:`listen_fds` checks each descriptor with ``getsockopt(SO_DOMAIN,
SO_TYPE)`` (what ``socket.socket(fileno=...)`` reads), makes it
close-on-exec, and removes the variables from the environment, so a child
process started later does not believe it was activated.
:class:`InheritedStreamTransport` and :class:`InheritedDatagramTransport` are
transports around such an already listening socket (or any descriptor):
``bind()`` and ``activate()`` do not rebind, ``close()`` closes it.

sd_notify (``sd_notify(3)``)
----------------------------

The protocol is one datagram per message to the ``AF_UNIX`` socket named by
``NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract one), holding
newline-separated ``KEY=value`` lines.  It is small enough to speak here
rather than depend on ``python-systemd`` (a C extension) or ``sdnotify``:
:class:`Notifier` sends ``READY=1``, ``STATUS=``, ``STOPPING=1``,
``RELOADING=1`` with ``MONOTONIC_USEC=``, ``MAINPID=`` and ``WATCHDOG=1``.

The watchdog ping must prove that the server works, not that a process
exists: a free-running thread would keep pinging while the serving loop is
wedged, and systemd would never restart it.  :class:`WatchdogHeartbeat` is
therefore *called by the loop* (``service_actions``, via
:class:`HeartbeatDispatcher`) and sends ``WATCHDOG=1`` when one is due; a
loop that stops turning stops the pings.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from socket import socket as Socket  # `socket` is also a property name below
from typing import ClassVar, Final, Self, TypeVar, final

import attrs

from ._request import DATAGRAM_REQUESTS, STREAM_REQUESTS, DatagramRequests, StreamRequests
from ._socketutil import family_name
from .exceptions import ActivationError, InheritedSocketError, ServerClosedError
from .interfaces import Address, DatagramRequest, Dispatcher, Job

__all__ = (
    "IP_FAMILIES",
    "LISTEN_VARIABLES",
    "SD_LISTEN_FDS_START",
    "HeartbeatDispatcher",
    "InheritedDatagramTransport",
    "InheritedStreamTransport",
    "ListenFD",
    "ListenSocket",
    "Notifier",
    "WatchdogHeartbeat",
    "check_socket",
    "format_notification",
    "listen_fds",
    "notify_address",
    "parse_listen_fds",
    "select_socket",
    "watchdog_interval",
)

_logger = logging.getLogger("composable_server.systemd")

SD_LISTEN_FDS_START: Final = 3
"""The first inherited descriptor (``sd-daemon.h``)."""

LISTEN_VARIABLES: Final = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
"""The socket-activation variables :func:`listen_fds` removes from the environment."""

IP_FAMILIES: Final = frozenset({socket.AF_INET, socket.AF_INET6})

# A request passes through start_request unchanged, whatever its type.
RequestT = TypeVar("RequestT")
ClientT = TypeVar("ClientT")


# -- socket activation: the environment (pure) ----------------------------------------


@final
@attrs.frozen
class ListenFD:
    """One inherited descriptor as the environment describes it.

    Attributes:
        fd: the descriptor (3, 4, ...).
        index: its position among the inherited ones (0, 1, ...).
        name: its ``LISTEN_FDNAMES`` entry, or None when the variable is not set.
    """

    fd: int
    index: int
    name: str | None


def _integer(environ: Mapping[str, str], key: str) -> int:
    text = environ[key]
    try:
        return int(text)
    except ValueError:
        raise ActivationError(f"{key} is {text!r}, not a number") from None


def parse_listen_fds(environ: Mapping[str, str], pid: int) -> tuple[ListenFD, ...]:
    """The descriptors *environ* passes to the process *pid* (no I/O).

    Raises:
        ActivationError: ``LISTEN_FDS`` or ``LISTEN_PID`` is unset, or
            malformed; ``LISTEN_PID`` is not *pid*; ``LISTEN_FDNAMES`` does not
            name every descriptor.
    """
    if "LISTEN_FDS" not in environ:
        raise ActivationError("LISTEN_FDS is not set (the process was not socket-activated)")
    if "LISTEN_PID" not in environ:
        raise ActivationError("LISTEN_FDS is set but LISTEN_PID is not")
    listen_pid = _integer(environ, "LISTEN_PID")
    if listen_pid != pid:
        raise ActivationError(
            f"LISTEN_PID is {listen_pid}, not this process ({pid}): the sockets were passed to another process"
        )
    count = _integer(environ, "LISTEN_FDS")
    if count < 0:
        raise ActivationError(f"LISTEN_FDS is {count}, expected a count >= 0")
    names: Sequence[str | None] = [None] * count
    if "LISTEN_FDNAMES" in environ:
        given = environ["LISTEN_FDNAMES"].split(":") if count else []
        if len(given) != count:
            raise ActivationError(
                f"LISTEN_FDNAMES names {len(given)} descriptor(s) ({environ['LISTEN_FDNAMES']!r}), "
                f"LISTEN_FDS passes {count}"
            )
        names = given
    return tuple(ListenFD(SD_LISTEN_FDS_START + i, i, name) for i, name in enumerate(names))


# -- socket activation: the descriptors -----------------------------------------------


def _kind_name(kind: int) -> str:
    try:
        return socket.SocketKind(kind).name
    except ValueError:
        return f"socket type {kind}"


def _describe(families: frozenset[socket.AddressFamily] | None, kind: socket.SocketKind | None) -> str:
    parts = []
    if families is not None:
        parts.append("/".join(sorted(family_name(f) for f in families)))
    if kind is not None:
        parts.append(kind.name)
    return " ".join(parts) or "a socket"


def check_socket(
    sock: Socket,
    *,
    families: frozenset[socket.AddressFamily] | None = None,
    kind: socket.SocketKind | None = None,
    name: str | None = None,
) -> None:
    """Check that *sock* has one of *families*, the type *kind*, and listens if a stream.

    The family and type are the kernel's (``SO_DOMAIN``, ``SO_TYPE``), not
    what the socket object was told.

    Raises:
        InheritedSocketError: a mismatch; it names the descriptor.
    """
    fd = sock.fileno()
    family = sock.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)
    found_kind = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
    found = f"{family_name(family)} {_kind_name(found_kind)}"
    expected = _describe(families, kind)
    if (families is not None and family not in families) or (kind is not None and found_kind != kind):
        raise InheritedSocketError(fd, expected=expected, found=found, name=name)
    if found_kind == socket.SOCK_STREAM and not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise InheritedSocketError(fd, expected=f"{expected} (listening)", found=f"{found}, not listening", name=name)


def _socket_from_fd(fd: int, name: str | None = None) -> Socket:
    """A socket object owning *fd*, after checking that *fd* is a socket."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        raise InheritedSocketError(fd, expected="a socket", found=f"no usable descriptor ({exc.strerror})", name=name)
    if not stat.S_ISSOCK(mode):
        raise InheritedSocketError(fd, expected="a socket", found=f"file type {stat.S_IFMT(mode):#o}", name=name)
    # socket(fileno=) reads the family, type and protocol with getsockopt
    # (SO_DOMAIN, SO_TYPE, SO_PROTOCOL), so the object tells the truth.
    return socket.socket(fileno=fd)


@final
@attrs.frozen
class ListenSocket:
    """An inherited listening socket.

    Attributes:
        socket: the socket (close-on-exec; this process owns it).
        index: its position among the inherited ones.
        name: its ``LISTEN_FDNAMES`` name, or None.
    """

    socket: Socket
    index: int
    name: str | None

    @property
    def label(self) -> str:
        """``fd 3 ('web')``, or ``fd 3`` without a name."""
        fd = SD_LISTEN_FDS_START + self.index
        return f"fd {fd}" if self.name is None else f"fd {fd} ({self.name!r})"


def listen_fds(
    *,
    required: bool = False,
    unset_environment: bool = True,
    environ: MutableMapping[str, str] | None = None,
) -> tuple[ListenSocket, ...]:
    """The listening sockets systemd passed to this process.

    Args:
        required: raise :class:`ActivationError` when there are none (not
            activated, or ``LISTEN_PID`` names another process); else return ``()``.
        unset_environment: remove :data:`LISTEN_VARIABLES` from *environ*
            (also when they were meant for another process), so that children
            do not see them.
        environ: default :data:`os.environ`.

    Raises:
        ActivationError: malformed variables (always), or no activation when *required*.
        InheritedSocketError: a passed descriptor is not a socket.
    """
    env = os.environ if environ is None else environ
    try:
        described = parse_listen_fds(env, os.getpid())
    except ActivationError:
        if required or ("LISTEN_FDS" in env and "LISTEN_PID" in env and env["LISTEN_PID"] == str(os.getpid())):
            raise  # malformed variables meant for us are an error either way
        described = ()
    finally:
        if unset_environment:
            for key in LISTEN_VARIABLES:
                env.pop(key, None)
    if required and not described:
        raise ActivationError("LISTEN_FDS is 0: no socket was passed")
    sockets = []
    for entry in described:
        # Not inherited by our children (the convention, and what systemd's
        # sd_listen_fds does with FD_CLOEXEC).
        os.set_inheritable(entry.fd, False)
        sockets.append(ListenSocket(_socket_from_fd(entry.fd, entry.name), entry.index, entry.name))
    return tuple(sockets)


def select_socket(sockets: Sequence[ListenSocket], name: str | None = None) -> ListenSocket:
    """The socket called *name*, or the first one when *name* is None.

    When no socket has a name (``LISTEN_FDNAMES`` unset), *name* may be a
    position: ``"0"`` for fd 3, ``"1"`` for fd 4, ...

    Raises:
        ActivationError: no socket was passed, or none has that name.
    """
    if not sockets:
        raise ActivationError("no socket was passed")
    if name is None:
        return sockets[0]
    for candidate in sockets:
        if candidate.name == name:
            return candidate
    if all(candidate.name is None for candidate in sockets) and name.isdigit() and int(name) < len(sockets):
        return sockets[int(name)]
    passed = ", ".join(candidate.label for candidate in sockets)
    raise ActivationError(f"no socket named {name!r} among the ones passed: {passed}")


# -- transports around an inherited socket ----------------------------------------------


@attrs.define(eq=False, repr=False)
class _InheritedTransport:
    """Shared part: the socket exists already; bind and activate do not rebind."""

    _sock: Socket | None = attrs.field(alias="sock")
    name: str | None = attrs.field(default=None, kw_only=True)
    _address: Address = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        assert self._sock is not None
        self._address = self._sock.getsockname()

    @property
    def server_address(self) -> Address:
        """The address the socket is bound to (``getsockname()``)."""
        return self._address

    @property
    def socket(self) -> Socket:
        """The inherited socket.

        Raises:
            ServerClosedError: after :meth:`close`.
        """
        if self._sock is None:
            raise ServerClosedError(f"{self!r} is closed")
        return self._sock

    def bind(self) -> None:
        """Nothing: the socket is bound already.

        Raises:
            ServerClosedError: after :meth:`close`.
        """
        self.socket  # noqa: B018  # only for the closed check

    def close(self) -> None:
        """Close the socket (a Unix socket's file is left: its creator owns it).

        Idempotent; never raises OSError.
        """
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def fileno(self) -> int:
        """The descriptor, or -1 once closed."""
        return -1 if self._sock is None else self._sock.fileno()

    # The accepted address is the client: the verifier runs in the accept loop.
    late_admission: ClassVar[bool] = False

    def start_request(self, request: RequestT, client_address: ClientT) -> tuple[RequestT, ClientT]:
        """Return *request* and *client_address* unchanged."""
        return request, client_address

    def __repr__(self) -> str:
        state = "closed" if self._sock is None else f"fd {self._sock.fileno()}"
        name = "" if self.name is None else f" {self.name!r}"
        return f"<{type(self).__name__}{name} {self._address!r} {state}>"



@final
@attrs.define(eq=False, repr=False)
class InheritedStreamTransport(_InheritedTransport):
    """A stream transport around a socket that is already listening (any family).

    Args:
        sock: the listening socket; the transport owns it from now on.
        name: a label for logs (the ``LISTEN_FDNAMES`` name).
        nonblocking: make the socket non-blocking on :meth:`activate`
            (default True, as :class:`~composable_server.transports.TCPTransport`),
            so the serving loop accepts every pending connection per wake-up.

    Raises:
        InheritedSocketError: *sock* is not a listening stream socket.
    """

    nonblocking: bool = attrs.field(default=True, kw_only=True)
    request_ops: ClassVar[StreamRequests] = STREAM_REQUESTS

    def __attrs_post_init__(self) -> None:
        assert self._sock is not None
        check_socket(self._sock, kind=socket.SOCK_STREAM, name=self.name)
        super().__attrs_post_init__()

    @classmethod
    def from_fd(cls, fd: int, *, name: str | None = None, nonblocking: bool = True) -> Self:
        """A transport owning the listening stream socket *fd*.

        Raises:
            InheritedSocketError: *fd* is not a listening stream socket.
        """
        sock = _socket_from_fd(fd, name)
        try:
            return cls(sock, name=name, nonblocking=nonblocking)
        except InheritedSocketError:
            sock.detach()  # not ours to close: the caller still owns *fd*
            raise

    def activate(self) -> None:
        """Set the blocking mode; no ``listen()``: the socket listens already."""
        self.socket.setblocking(not self.nonblocking)

    def shutdown_request(self, request: Socket) -> None:
        """``shutdown(SHUT_WR)`` then close; never raises OSError."""
        try:
            request.shutdown(socket.SHUT_WR)  # the peer reads every byte, then EOF
        except OSError:
            pass  # the peer may already have closed (ENOTCONN)
        request.close()

    def close_request(self, request: Socket) -> None:
        """Close the connection without a shutdown (idempotent)."""
        request.close()


@final
@attrs.define(eq=False, repr=False)
class InheritedDatagramTransport(_InheritedTransport):
    """A datagram transport around a bound socket (any family); requests are ``(data, socket)``.

    Args:
        sock: the bound datagram socket; the transport owns it from now on.
        name: a label for logs.
        nonblocking: make the socket non-blocking on :meth:`activate`
            (default True, as :class:`~composable_server.transports.UDPTransport`),
            so a prefork worker that lost the race for a datagram gets
            ``EAGAIN`` instead of blocking in ``recvfrom``.

    Raises:
        InheritedSocketError: *sock* is not a datagram socket.
    """

    nonblocking: bool = attrs.field(default=True, kw_only=True)
    request_ops: ClassVar[DatagramRequests] = DATAGRAM_REQUESTS

    def __attrs_post_init__(self) -> None:
        assert self._sock is not None
        check_socket(self._sock, kind=socket.SOCK_DGRAM, name=self.name)
        super().__attrs_post_init__()

    @classmethod
    def from_fd(cls, fd: int, *, name: str | None = None, nonblocking: bool = True) -> Self:
        """A transport owning the datagram socket *fd*.

        Raises:
            InheritedSocketError: *fd* is not a datagram socket.
        """
        sock = _socket_from_fd(fd, name)
        try:
            return cls(sock, name=name, nonblocking=nonblocking)
        except InheritedSocketError:
            sock.detach()
            raise

    def activate(self) -> None:
        """Set the blocking mode, as :class:`~composable_server.transports.UDPTransport` does."""
        self.socket.setblocking(not self.nonblocking)

    def shutdown_request(self, request: DatagramRequest) -> None:
        """Nothing: the request shares the listening socket."""

    def close_request(self, request: DatagramRequest) -> None:
        """Nothing: the request shares the listening socket."""


# -- sd_notify ---------------------------------------------------------------------------


def notify_address(value: str | None) -> str | bytes | None:
    """The socket address of a ``NOTIFY_SOCKET`` value (no I/O).

    ``/path`` stays a path; ``@name`` is the abstract name ``b"\\0name"``.
    None or ``""`` is no socket.

    Raises:
        ValueError: another form (systemd also knows ``vsock:``, which is not supported here).
    """
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + os.fsencode(value[1:])
    if value.startswith("/"):
        return value
    raise ValueError(f"NOTIFY_SOCKET={value!r}: expected an absolute path or @name")


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``WATCHDOG_USEC``, as
    ``sd_watchdog_enabled(3)`` advises; None when no watchdog applies to *pid*
    (``WATCHDOG_USEC`` unset, or ``WATCHDOG_PID`` naming another process).

    Raises:
        ValueError: a malformed ``WATCHDOG_USEC`` or ``WATCHDOG_PID``.
    """
    text = environ.get("WATCHDOG_USEC")
    if not text:
        return None
    watchdog_pid = environ.get("WATCHDOG_PID")
    if watchdog_pid:
        if not watchdog_pid.isdigit():
            raise ValueError(f"WATCHDOG_PID={watchdog_pid!r}: expected a pid")
        if int(watchdog_pid) != pid:
            return None
    if not text.isdigit() or int(text) == 0:
        raise ValueError(f"WATCHDOG_USEC={text!r}: expected microseconds > 0")
    return int(text) / 2 / 1_000_000


def format_notification(*assignments: str) -> bytes:
    """One sd_notify datagram: the ``KEY=value`` lines joined by newlines.

    Raises:
        ValueError: an assignment without ``=``, or with a newline (it would
            become two, e.g. a ``STATUS=`` text smuggling ``READY=1``).
    """
    for assignment in assignments:
        key, sep, _ = assignment.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=value, got {assignment!r}")
        if "\n" in assignment:
            raise ValueError(f"a newline in {assignment!r} would start another assignment")
    return "\n".join(assignments).encode()


def _monotonic_usec() -> int:
    # MONOTONIC_USEC= is CLOCK_MONOTONIC (systemd compares it with its own).
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


@final
@attrs.define(eq=False, repr=False)
class Notifier:
    """Sends sd_notify messages; without an address every call is a no-op.

    Sending never raises: a supervisor that went away must not take the
    server down.  The first failure is logged at WARNING, later ones at DEBUG.

    Args:
        address: the ``AF_UNIX`` datagram address (see :func:`notify_address`), or None.
        watchdog_interval: seconds between ``WATCHDOG=1`` pings, or None (see
            :func:`watchdog_interval`).
        ready_fd: a pipe to tell "ready" too, once: the first :meth:`ready`
            writes a line to it and closes it (how a re-executed prefork
            supervisor tells its predecessor, see
            :meth:`~composable_server.prefork.Prefork.reexec`).
    """

    address: str | bytes | None = None
    watchdog_interval: float | None = attrs.field(default=None, kw_only=True)
    ready_fd: int | None = attrs.field(default=None, kw_only=True)
    _sock: Socket | None = attrs.field(init=False, default=None)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    _failures: int = attrs.field(init=False, default=0)
    _sent: int = attrs.field(init=False, default=0)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """The notifier ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` describe.

        The variables stay in the environment (``sd_notify``'s default): a
        re-executed program needs them.  A malformed value is logged and
        that part disabled.
        """
        env = os.environ if environ is None else environ
        try:
            address = notify_address(env.get("NOTIFY_SOCKET"))
        except ValueError as exc:
            _logger.warning("sd_notify disabled: %s", exc)
            address = None
        try:
            interval = watchdog_interval(env, os.getpid()) if address is not None else None
        except ValueError as exc:
            _logger.warning("systemd watchdog disabled: %s", exc)
            interval = None
        return cls(address, watchdog_interval=interval)

    @property
    def enabled(self) -> bool:
        """True if there is a socket to notify."""
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """Send one message of ``KEY=value`` *assignments*; True if it was sent.

        Raises:
            ValueError: a malformed assignment (see :func:`format_notification`).
        """
        message = format_notification(*assignments)
        address = self.address
        if address is None:
            return False
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # close-on-exec
                self._sock.sendto(message, address)
            except OSError as exc:
                self._failures += 1
                level = logging.WARNING if self._failures == 1 else logging.DEBUG
                _logger.log(level, "sd_notify to %r failed: %s", self.address, exc)
                return False
            self._sent += 1
            return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: startup (or a reload) is complete; with a ``STATUS=`` line."""
        fd, self.ready_fd = self.ready_fd, None
        if fd is not None:
            try:
                os.write(fd, b"READY\n")
            except OSError as exc:
                _logger.warning("cannot tell the previous generation we are ready: %s", exc)
            finally:
                os.close(fd)
        return self.notify("READY=1", *self._status(status))

    def status(self, text: str) -> bool:
        """``STATUS=text``: one line for ``systemctl status``."""
        return self.notify(*self._status(text))

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: a stop has begun."""
        return self.notify("STOPPING=1", *self._status(status))

    def reloading(self, status: str | None = None) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC=`` (``Type=notify-reload`` requires
        it); send :meth:`ready` when the reload is complete."""
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={_monotonic_usec()}", *self._status(status))

    def main_pid(self, pid: int) -> bool:
        """``MAINPID=pid``: the service's main process is now *pid* (after a re-exec)."""
        return self.notify(f"MAINPID={pid}")

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the keep-alive ping (prefer :meth:`heartbeat`)."""
        return self.notify("WATCHDOG=1")

    def heartbeat(self, clock: Callable[[], float] = time.monotonic) -> WatchdogHeartbeat | None:
        """A :class:`WatchdogHeartbeat` pinging through this notifier, or None without a watchdog."""
        if self.watchdog_interval is None or self.address is None:
            return None
        return WatchdogHeartbeat(self.watchdog, self.watchdog_interval, clock=clock)

    @staticmethod
    def _status(text: str | None) -> tuple[str, ...]:
        return () if text is None else ("STATUS=" + " ".join(text.split()),)

    def close(self) -> None:
        """Close the sending socket.  Idempotent; a later message opens a new one."""
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __repr__(self) -> str:
        watchdog = "" if self.watchdog_interval is None else f" watchdog every {self.watchdog_interval:g} s"
        return f"<Notifier {self.address!r}{watchdog} [sent: {self._sent}, failed: {self._failures}]>"


@final
@attrs.define(eq=False, repr=False)
class WatchdogHeartbeat:
    """Pings when due, and only when the serving loop calls :meth:`beat`.

    Args:
        ping: sends one ``WATCHDOG=1`` (usually :meth:`Notifier.watchdog`).
        interval: seconds between pings (half the watchdog timeout).
        clock: monotonic seconds (a fake in tests).
    """

    ping: Callable[[], object]
    interval: float = attrs.field(validator=attrs.validators.gt(0))
    clock: Callable[[], float] = attrs.field(default=time.monotonic, kw_only=True)
    _due: float | None = attrs.field(init=False, default=None)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)

    def beat(self) -> bool:
        """Called from the serving loop: ping if one is due; True if it pinged.

        The first beat pings at once (the service has just become ready).
        """
        now = self.clock()
        with self._lock:
            if self._due is not None and now < self._due:
                return False
            self._due = now + self.interval
        self.ping()
        return True

    def __repr__(self) -> str:
        return f"<WatchdogHeartbeat every {self.interval:g} s>"


@final
@attrs.define(eq=False, repr=False)
class HeartbeatDispatcher:
    """A dispatcher that also beats *heartbeat* on every ``service()`` call.

    The server calls ``dispatcher.service()`` once per loop iteration (at
    least every ``poll_interval`` while idle), so the heartbeat stops when the
    loop stops turning: wedged, or blocked dispatching to a pool that never
    frees a worker.  Everything else is delegated to *inner*.

    Args:
        inner: the dispatcher that runs the jobs.
        heartbeat: what the loop beats (a :class:`WatchdogHeartbeat`).
    """

    inner: Dispatcher
    heartbeat: WatchdogHeartbeat

    def dispatch(self, job: Job) -> None:
        """Hand *job* to the inner dispatcher."""
        self.inner.dispatch(job)

    def service(self) -> None:
        """The inner dispatcher's housekeeping, then a beat."""
        self.inner.service()
        self.heartbeat.beat()

    def join(self, timeout: float | None) -> tuple[Job, ...]:
        """The inner dispatcher's join."""
        return self.inner.join(timeout)

    def close(self) -> None:
        """Close the inner dispatcher."""
        self.inner.close()

    def __repr__(self) -> str:
        return f"<HeartbeatDispatcher {self.inner!r} {self.heartbeat!r}>"
