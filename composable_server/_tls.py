"""TLS over any stream transport: :class:`TLSTransport`, loaded on first use.

Re-exported by :mod:`composable_server.transports` (PEP 562), where programs
import it from: a program that serves no TLS builds none of these classes.
"""

from __future__ import annotations

import errno
import functools
import select
import threading
import time
from socket import socket as Socket
from typing import TYPE_CHECKING, ClassVar, Final, TypeVar, final

import attrs

from ._wrapper import _Wrapper
from .exceptions import TLSHandshakeError
from .interfaces import Transport

if TYPE_CHECKING:
    import ssl  # imported where used: a TLSTransport's context has loaded it

    from _typeshed import WriteableBuffer

__all__ = ("DEFAULT_HANDSHAKE_TIMEOUT", "TLSStatistics", "TLSTransport")

StreamAddressT = TypeVar("StreamAddressT")
# start_request passes its client address through, whatever its type.
ClientT = TypeVar("ClientT")

DEFAULT_HANDSHAKE_TIMEOUT: Final = 30.0
"""Seconds a client has to complete the TLS handshake (nginx's
``ssl_handshake_timeout`` default is 60 s; 30 s is plenty on any real link)."""


def _check_tls_inner(instance: object, attribute: attrs.Attribute[object], value: object) -> None:
    # TLS starts with the connection's first byte, so no layer that reads
    # bytes before it can sit inside: its start_request would never run.
    if isinstance(value, _Wrapper):
        raise TypeError(
            f"TLSTransport cannot wrap {type(value).__name__}: the layer that reads the first bytes goes "
            "outside (the PROXY header comes before the TLS handshake on the wire: "
            "ProxyProtocolTransport(TLSTransport(TCPTransport(...), context), mode=...))"
        )


def _check_handshake_timeout(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:  # also rejects NaN
        raise ValueError(f"handshake_timeout must be a number of seconds > 0, got {value!r}")


@functools.cache
def _tls_socket_class() -> type[ssl.SSLSocket]:
    """The class of the TLS sockets handlers get (made on first use: ``ssl`` is loaded by then)."""
    import ssl

    # Named as its base: handlers (and their logs) see an SSLSocket, of this module.
    class SSLSocket(ssl.SSLSocket):
        """An :class:`ssl.SSLSocket` whose reads take a TCP reset for EOF,
        as ``suppress_ragged_eofs`` (set: start_request wraps with the
        default) does a close without ``close_notify``, on every Python
        version.

        Why: a TLS 1.3 server sends its session tickets right after the
        handshake (RFC 8446 s. 4.6.1), so a client that closes without
        reading them (``openssl s_time -new``, health checks, preconnects)
        leaves them unread in its kernel buffer, and its close becomes a
        reset.  Python up to 3.12 read that as EOF; 3.13 raises
        ``ConnectionResetError`` (CPython gh-115627), which made every such
        client a handler error with a traceback.  A reset and a ragged
        close are the same unauthenticated end of the stream; the handler
        sees EOF for both, as before.  Writes are unchanged: writing to a
        reset connection raises as ever.
        """

        __slots__ = ()  # the layout of ssl.SSLSocket: start_request retypes its sockets

        def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
            try:
                return super().recv(buflen, flags)
            except ConnectionResetError:
                return b""

        def recv_into(self, buffer: WriteableBuffer, nbytes: int | None = None, flags: int = 0) -> int:
            try:
                return super().recv_into(buffer, nbytes, flags)
            except ConnectionResetError:
                return 0

    SSLSocket.__module__ = __name__
    SSLSocket.__qualname__ = "SSLSocket"
    return SSLSocket


def _peer(sock: Socket) -> object:
    try:
        return sock.getpeername()
    except OSError:
        return None  # the client has gone already


@final
@attrs.frozen
class TLSStatistics:
    """A snapshot of a :class:`TLSTransport`'s handshakes (this process only:
    under the forking dispatcher, handshakes happen in the children).

    Attributes:
        completed: handshakes that succeeded.
        failed: handshakes that failed, the timed-out ones included.
        timed_out: handshakes cut at the deadline.
    """

    completed: int
    failed: int
    timed_out: int


@final
@attrs.define(eq=False, repr=False)
class TLSTransport(_Wrapper[StreamAddressT]):
    """TLS over any stream transport (TCP, Unix stream, ...).

    Everything but the handshake is delegated to *inner*: it owns the
    listening socket, the accept loop sees plain sockets.  The handshake runs
    in :meth:`start_request`, which the server calls in the worker (thread or
    child) just before the handler, never in the accept loop: a client that
    connects and says nothing, or sends garbage, occupies one worker for at
    most *handshake_timeout* seconds and delays no one else.

    SNI (``context.sni_callback``), ALPN (``context.set_alpn_protocols``)
    and client certificates (``context.verify_mode = ssl.CERT_REQUIRED``)
    work through the context as usual.  Handlers get the
    :class:`ssl.SSLSocket` as their request: ``getpeercert()``,
    ``selected_alpn_protocol()``, ``version()``.

    Plain transports are untouched: their requests never pass through here.

    Each handshake in progress holds a worker.  With a bounded pool, a crowd
    of silent clients could hold them all for *handshake_timeout*; set a
    first-byte budget (``ConnectionTimeouts(Budget(first_byte=...))``) and
    silent connections wait in the serving loop instead, costing no worker
    (a TLS client speaks first).  With ``SyncDispatcher`` the worker is the
    serving thread itself: one handshake at a time.

    Args:
        inner: the stream transport to wrap.
        context: a server-side context (``ssl.create_default_context(
            ssl.Purpose.CLIENT_AUTH)`` with ``load_cert_chain(...)``).
        handshake_timeout: seconds the whole handshake may take: a deadline,
            not a per-read timeout, so a client dribbling one byte at a time
            cannot stretch it.
    """

    inner: Transport[Socket, StreamAddressT] = attrs.field(validator=_check_tls_inner)
    context: ssl.SSLContext
    handshake_timeout: float = attrs.field(
        default=DEFAULT_HANDSHAKE_TIMEOUT, kw_only=True, validator=_check_handshake_timeout
    )
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    _completed: int = attrs.field(init=False, default=0)
    _failed: int = attrs.field(init=False, default=0)
    _timed_out: int = attrs.field(init=False, default=0)

    # -- TLS ------------------------------------------------------------------------

    def shutdown_request(self, request: Socket) -> None:
        """Send a TLS ``close_notify`` (best effort, never blocking), then let
        the inner transport shut the connection down.  Never raises OSError."""
        import ssl

        if isinstance(request, ssl.SSLSocket):
            try:
                # Non-blocking: SSL_shutdown sends close_notify, then would wait
                # for the peer's; we do not (RFC 8446 s. 6.1 allows closing).
                request.setblocking(False)
                request.unwrap()
            except (OSError, ValueError):
                pass  # SSLWantReadError (expected), or the peer is gone
        self.inner.shutdown_request(request)

    # The accepted address is the client: the verifier runs in the accept loop.
    late_admission: ClassVar[bool] = False

    def start_request(self, request: Socket, client_address: ClientT) -> tuple[ssl.SSLSocket, ClientT]:
        """Perform the server side of the TLS handshake on *request*, with the deadline.

        Returns:
            The :class:`ssl.SSLSocket`, with the socket timeout *request* had,
            and *client_address* unchanged.  Its reads return EOF when the
            client resets the connection, as when it closes it without
            ``close_notify``, on every Python version (3.13 would raise
            ``ConnectionResetError``; see ``_tls_socket_class``).

        Raises:
            TLSHandshakeError: the handshake failed (bad or missing
                certificate, not TLS at all, the client left) or did not
                finish within *handshake_timeout*; raised ``from`` the
                original error.  The TLS socket is closed; *request* is left
                detached, for the server to release.
        """
        import ssl

        peer = _peer(request)
        previous = request.gettimeout()
        try:
            tls = self.context.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        except (OSError, ValueError) as exc:
            raise self._failure(f"cannot start TLS: {exc}", peer, exc) from exc
        if type(tls) is ssl.SSLSocket:
            # Resets read as EOF (see _tls_socket_class).  A context with its
            # own sslsocket_class keeps it, and its semantics.
            tls.__class__ = _tls_socket_class()
        try:
            self._handshake(tls, peer)
            tls.settimeout(previous)
        except BaseException:
            tls.close()
            raise
        with self._lock:
            self._completed += 1
        return tls, client_address

    def _handshake(self, tls: ssl.SSLSocket, peer: object) -> None:
        import ssl

        deadline = time.monotonic() + self.handshake_timeout
        tls.setblocking(False)
        poller = select.poll()
        registered = False
        while True:
            try:
                tls.do_handshake()
                return
            except ssl.SSLWantReadError:
                events = select.POLLIN
            except ssl.SSLWantWriteError:
                events = select.POLLOUT
            except OSError as exc:  # SSLError (bad certificate, not TLS), EOF, reset
                raise self._failure(_reason(exc), peer, exc) from exc
            remaining = deadline - time.monotonic()
            if registered:
                poller.modify(tls, events)
            else:
                poller.register(tls, events)
                registered = True
            if remaining <= 0 or not poller.poll(remaining * 1000.0):
                timeout = TimeoutError(errno.ETIMEDOUT, f"TLS handshake timed out after {self.handshake_timeout} s")
                raise self._failure(
                    f"timed out after {self.handshake_timeout} s", peer, timeout, timed_out=True
                ) from timeout

    def _failure(
        self, reason: str, peer: object, exc: BaseException, *, timed_out: bool = False
    ) -> TLSHandshakeError:
        with self._lock:
            self._failed += 1
            self._timed_out += timed_out
        code = exc.errno if isinstance(exc, OSError) and isinstance(exc.errno, int) else None
        return TLSHandshakeError(reason, client_address=peer, timed_out=timed_out, errno=code)

    def statistics(self) -> TLSStatistics:
        """A snapshot of the handshake counts (this process)."""
        with self._lock:
            return TLSStatistics(completed=self._completed, failed=self._failed, timed_out=self._timed_out)

    def __repr__(self) -> str:
        stats = self.statistics()
        return (
            f"<TLSTransport over {self.inner!r} handshake_timeout={self.handshake_timeout} "
            f"[completed: {stats.completed}, failed: {stats.failed}, timed out: {stats.timed_out}]>"
        )


def _reason(exc: OSError) -> str:
    import ssl

    if isinstance(exc, ssl.SSLError):
        return f"{exc.reason or type(exc).__name__}: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc.strerror or exc}"
