"""Factories: servers and server classes from a choice of components.

Two layers (STYLE item 11: primitive, composer, convenience):

* convenience functions for the native API, each a thin wrapper over
  :class:`~composable_server.server.Server` that picks the transport and
  acceptor for one family and returns a precisely typed server:
  :func:`make_tcp_server`, :func:`make_udp_server`,
  :func:`make_unix_stream_server`, :func:`make_unix_datagram_server`;
* :func:`server_class`, a stdlib-style server *class* (the kind
  :mod:`composable_server.compat` exports) for a transport x dispatcher
  choice, optionally with other components.

The twelve classic :mod:`socketserver` classes are the product of two tables,
:data:`TRANSPORTS` (TCP, UDP, Unix stream, Unix datagram) and
:data:`DISPATCHERS` (sync, threading, forking), built once by
:func:`build_classic_servers` when :mod:`composable_server.compat` is imported.
Each produced class gets the ``__module__``/``__qualname__`` of its compat
name, so reprs, pickles and tracebacks show
``composable_server.compat.ThreadingTCPServer``.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from socket import socket as Socket
from typing import TYPE_CHECKING, Final, Literal, TypeAlias, get_args, overload

import attrs

from .acceptors import DEFAULT_MAX_PACKET_SIZE, DatagramAcceptor, StreamAcceptor
from .interfaces import (
    DatagramRequest,
    Dispatcher,
    ErrorPolicy,
    HandlerFactory,
    InetAddress,
    TimeoutPolicy,
    UnixAddress,
    Verifier,
)
from .server import Server
from .transports import DEFAULT_BACKLOG, TCPTransport, UDPTransport, UnixDatagramTransport, UnixStreamTransport

if TYPE_CHECKING:
    from .compat import TCPServer, UDPServer, UnixDatagramServer, UnixStreamServer

__all__ = (
    "COMPAT_MODULE",
    "DISPATCHERS",
    "TRANSPORTS",
    "DispatcherName",
    "TransportName",
    "TransportRow",
    "build_classic_servers",
    "classic_name",
    "make_tcp_server",
    "make_udp_server",
    "make_unix_datagram_server",
    "make_unix_stream_server",
    "server_class",
)

COMPAT_MODULE: Final = "composable_server.compat"

TransportName: TypeAlias = Literal["tcp", "udp", "unix_stream", "unix_datagram"]
"""A row of :data:`TRANSPORTS`."""

DispatcherName: TypeAlias = Literal["sync", "threading", "forking"]
"""A row of :data:`DISPATCHERS`."""


@attrs.frozen
class TransportRow:
    """One transport of the classic class table.

    Attributes:
        class_name: the stdlib class name (``"UDPServer"``).
        parent: the row whose class this one subclasses, as stdlib does
            (``UDPServer(TCPServer)``); None for the root (``TCPServer``),
            which subclasses ``compat.BaseServer``.
        attributes: the stdlib class attributes this class sets, with the
            stdlib values (socketserver.py, 3.11-3.13).
    """

    class_name: str
    parent: TransportName | None
    attributes: Mapping[str, object]


TRANSPORTS: Final[Mapping[TransportName, TransportRow]] = {
    # Order matters: a parent comes before its children.
    "tcp": TransportRow(
        "TCPServer",
        None,
        {
            "address_family": socket.AF_INET,
            "socket_type": socket.SOCK_STREAM,
            "request_queue_size": 5,
            "allow_reuse_address": False,
            "allow_reuse_port": False,
        },
    ),
    "udp": TransportRow(
        "UDPServer",
        "tcp",
        {
            "allow_reuse_address": False,
            "allow_reuse_port": False,
            "socket_type": socket.SOCK_DGRAM,
            "max_packet_size": 8192,
        },
    ),
    "unix_stream": TransportRow("UnixStreamServer", "tcp", {"address_family": socket.AF_UNIX}),
    "unix_datagram": TransportRow("UnixDatagramServer", "udp", {"address_family": socket.AF_UNIX}),
}
"""The four transport classes of :mod:`socketserver`, in dependency order."""

DISPATCHERS: Final[Mapping[DispatcherName, str]] = {
    "sync": "",
    "threading": "Threading",
    "forking": "Forking",
}
"""Dispatcher choice -> class-name prefix (the mixin is ``<prefix>MixIn``)."""


def classic_name(transport: TransportName, dispatcher: DispatcherName = "sync") -> str:
    """The stdlib name of the class for *transport* x *dispatcher*
    (``classic_name("udp", "threading") == "ThreadingUDPServer"``)."""
    return DISPATCHERS[dispatcher] + TRANSPORTS[transport].class_name


def _new_class(name: str, bases: tuple[type, ...], namespace: Mapping[str, object], module: str) -> type:
    cls = type(name, bases, {"__module__": module, "__qualname__": name, **namespace})
    return cls


def build_classic_servers(
    *,
    base: type,
    mixins: Mapping[DispatcherName, type | None],
    root_namespace: Mapping[str, object],
    module: str = COMPAT_MODULE,
) -> dict[str, type]:
    """Build the twelve classic server classes from the two tables.

    Args:
        base: the class the root transport class (``TCPServer``) subclasses.
        mixins: the mixin for each dispatcher (None for ``"sync"``).
        root_namespace: methods of the root class (its stdlib constructor).
        module: the ``__module__`` of every produced class.

    Returns:
        ``{name: class}`` for all twelve names, including the two Forking
        Unix classes that stdlib adds only from Python 3.12.
    """
    by_transport: dict[TransportName, type] = {}
    classes: dict[str, type] = {}
    for transport, row in TRANSPORTS.items():
        parent = base if row.parent is None else by_transport[row.parent]
        namespace = dict(row.attributes)
        if row.parent is None:
            namespace.update(root_namespace)
        cls = by_transport[transport] = classes[row.class_name] = _new_class(
            row.class_name, (parent,), namespace, module
        )
        for dispatcher in DISPATCHERS:
            mixin = mixins.get(dispatcher)
            if mixin is not None:
                name = classic_name(transport, dispatcher)
                classes[name] = _new_class(name, (mixin, cls), {}, module)
    return classes


@overload
def server_class(
    transport: Literal["tcp"],
    dispatcher: DispatcherName | Callable[[], Dispatcher] = "sync",
    *,
    name: str | None = None,
    module: str | None = None,
    verifier: Verifier[object, object] | None = None,
    error_policy: ErrorPolicy | None = None,
    attributes: Mapping[str, object] | None = None,
) -> type[TCPServer]: ...


@overload
def server_class(
    transport: Literal["udp"],
    dispatcher: DispatcherName | Callable[[], Dispatcher] = "sync",
    *,
    name: str | None = None,
    module: str | None = None,
    verifier: Verifier[object, object] | None = None,
    error_policy: ErrorPolicy | None = None,
    attributes: Mapping[str, object] | None = None,
) -> type[UDPServer]: ...


@overload
def server_class(
    transport: Literal["unix_stream"],
    dispatcher: DispatcherName | Callable[[], Dispatcher] = "sync",
    *,
    name: str | None = None,
    module: str | None = None,
    verifier: Verifier[object, object] | None = None,
    error_policy: ErrorPolicy | None = None,
    attributes: Mapping[str, object] | None = None,
) -> type[UnixStreamServer]: ...


@overload
def server_class(
    transport: Literal["unix_datagram"],
    dispatcher: DispatcherName | Callable[[], Dispatcher] = "sync",
    *,
    name: str | None = None,
    module: str | None = None,
    verifier: Verifier[object, object] | None = None,
    error_policy: ErrorPolicy | None = None,
    attributes: Mapping[str, object] | None = None,
) -> type[UnixDatagramServer]: ...


def server_class(
    transport: TransportName,
    dispatcher: DispatcherName | Callable[[], Dispatcher] = "sync",
    *,
    name: str | None = None,
    module: str | None = None,
    verifier: Verifier[object, object] | None = None,
    error_policy: ErrorPolicy | None = None,
    attributes: Mapping[str, object] | None = None,
) -> type[TCPServer]:
    """A stdlib-style server class for *transport* and *dispatcher*.

    With only the two choices (and no *name*), this is the classic class
    itself: ``server_class("tcp", "threading") is compat.ThreadingTCPServer``.
    Anything else gives a new subclass of it, which still has the stdlib
    constructor ``(server_address, RequestHandlerClass, bind_and_activate=True)``
    and hooks.

    Args:
        transport: ``"tcp"``, ``"udp"``, ``"unix_stream"`` or ``"unix_datagram"``.
        dispatcher: ``"sync"``, ``"threading"``, ``"forking"``, or a callable
            returning a fresh dispatcher for each server (the sync class is
            then the base).
        name: the class name (default: a name derived from the choices).
        module: the ``__module__`` of the class (default: the caller's
            concern; ``composable_server.factories`` otherwise).
        verifier: used by ``verify_request`` of every instance (shared).
        error_policy: used by ``handle_error`` of every instance (shared).
        attributes: class attributes, e.g. ``{"allow_reuse_address": True}``.

    Raises:
        ValueError: an unknown transport or dispatcher name.
    """
    from . import compat  # compat imports this module; import it lazily

    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(get_args(TransportName))}, got {transport!r}")
    custom_dispatcher: Callable[[], Dispatcher] | None = None
    if isinstance(dispatcher, str):
        if dispatcher not in DISPATCHERS:
            raise ValueError(
                f"dispatcher must be one of {', '.join(get_args(DispatcherName))} or a callable, got {dispatcher!r}"
            )
        classic: type[TCPServer] = getattr(compat, classic_name(transport, dispatcher))
    else:
        custom_dispatcher = dispatcher
        classic = getattr(compat, classic_name(transport))
    if name is None and custom_dispatcher is None and verifier is None and error_policy is None and not attributes:
        return classic
    namespace: dict[str, object] = dict(attributes or {})
    if custom_dispatcher is not None:
        make_dispatcher = custom_dispatcher
        namespace["_compat_dispatcher"] = lambda self: make_dispatcher()
    if verifier is not None:
        chosen_verifier = verifier
        namespace["_compat_verifier"] = lambda self: chosen_verifier
    if error_policy is not None:
        chosen_policy = error_policy
        namespace["_compat_error_policy"] = lambda self: chosen_policy
    cls_name = name if name is not None else f"Custom{classic.__name__}"
    cls: type[TCPServer] = _new_class(cls_name, (classic,), namespace, module or __name__)
    return cls


# -- convenience wrappers for the native API ----------------------------------


def make_tcp_server(
    address: InetAddress,
    handler: HandlerFactory[Socket, InetAddress],
    *,
    dispatcher: Dispatcher | None = None,
    verifier: Verifier[Socket, InetAddress] | None = None,
    error_policy: ErrorPolicy | None = None,
    timeout_policy: TimeoutPolicy | None = None,
    reuse_address: bool = True,
    reuse_port: bool = False,
    backlog: int = DEFAULT_BACKLOG,
    dual_stack: bool | None = None,
    bind_and_activate: bool = True,
) -> Server[Socket, InetAddress]:
    """A TCP server (IPv4 or IPv6, from the address) on the native API.

    Args:
        address: ``(host, port)`` or ``(host, port, flowinfo, scope_id)``.
        handler: called as ``handler(request, client_address, server)``.
        dispatcher: where handlers run (default: the serving thread).
        verifier, error_policy, timeout_policy: as :class:`Server`.
        reuse_address, reuse_port, backlog, dual_stack: as :class:`TCPTransport`.
        bind_and_activate: bind and listen now.

    Raises:
        AddressError: the address does not fit.
        BindError: the address could not be bound.
    """
    transport = TCPTransport(
        address, reuse_address=reuse_address, reuse_port=reuse_port, backlog=backlog, dual_stack=dual_stack
    )
    return Server(
        transport=transport,
        acceptor=StreamAcceptor(),
        handler=handler,
        verifier=verifier,
        dispatcher=dispatcher,
        error_policy=error_policy,
        timeout_policy=timeout_policy,
        bind_and_activate=bind_and_activate,
    )


def make_udp_server(
    address: InetAddress,
    handler: HandlerFactory[DatagramRequest, InetAddress],
    *,
    dispatcher: Dispatcher | None = None,
    verifier: Verifier[DatagramRequest, InetAddress] | None = None,
    error_policy: ErrorPolicy | None = None,
    timeout_policy: TimeoutPolicy | None = None,
    reuse_address: bool = False,
    reuse_port: bool = False,
    max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
    dual_stack: bool | None = None,
    bind_and_activate: bool = True,
) -> Server[DatagramRequest, InetAddress]:
    """A UDP server on the native API; requests are ``(data, socket)``.

    Args: as :func:`make_tcp_server`, with *max_packet_size* (the largest
        datagram read whole) instead of a backlog.
    """
    transport = UDPTransport(address, reuse_address=reuse_address, reuse_port=reuse_port, dual_stack=dual_stack)
    return Server(
        transport=transport,
        acceptor=DatagramAcceptor(max_packet_size),
        handler=handler,
        verifier=verifier,
        dispatcher=dispatcher,
        error_policy=error_policy,
        timeout_policy=timeout_policy,
        bind_and_activate=bind_and_activate,
    )


def make_unix_stream_server(
    path: UnixAddress,
    handler: HandlerFactory[Socket, UnixAddress],
    *,
    dispatcher: Dispatcher | None = None,
    verifier: Verifier[Socket, UnixAddress] | None = None,
    error_policy: ErrorPolicy | None = None,
    timeout_policy: TimeoutPolicy | None = None,
    backlog: int = DEFAULT_BACKLOG,
    unlink_on_close: bool = True,
    bind_and_activate: bool = True,
) -> Server[Socket, UnixAddress]:
    """A Unix stream server on the native API.

    Args: as :func:`make_tcp_server`; *path* is the socket file (or a Linux
        abstract name), removed on close if *unlink_on_close*.
    """
    transport = UnixStreamTransport(path, backlog=backlog, unlink_on_close=unlink_on_close)
    return Server(
        transport=transport,
        acceptor=StreamAcceptor(),
        handler=handler,
        verifier=verifier,
        dispatcher=dispatcher,
        error_policy=error_policy,
        timeout_policy=timeout_policy,
        bind_and_activate=bind_and_activate,
    )


def make_unix_datagram_server(
    path: UnixAddress,
    handler: HandlerFactory[DatagramRequest, UnixAddress],
    *,
    dispatcher: Dispatcher | None = None,
    verifier: Verifier[DatagramRequest, UnixAddress] | None = None,
    error_policy: ErrorPolicy | None = None,
    timeout_policy: TimeoutPolicy | None = None,
    max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
    unlink_on_close: bool = True,
    bind_and_activate: bool = True,
) -> Server[DatagramRequest, UnixAddress]:
    """A Unix datagram server on the native API; requests are ``(data, socket)``.

    Args: as :func:`make_unix_stream_server`, with *max_packet_size*.
    """
    transport = UnixDatagramTransport(path, unlink_on_close=unlink_on_close)
    return Server(
        transport=transport,
        acceptor=DatagramAcceptor(max_packet_size),
        handler=handler,
        verifier=verifier,
        dispatcher=dispatcher,
        error_policy=error_policy,
        timeout_policy=timeout_policy,
        bind_and_activate=bind_and_activate,
    )
