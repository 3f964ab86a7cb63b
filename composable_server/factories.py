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
The table lives in the private ``_classes`` module, below both this module
and compat (it imports neither), and is re-exported here under the same
names.  The ``make_*_server`` functions sit below compat too; only
:func:`server_class` stands above it, and imports it when called, so that
``import composable_server.factories`` (and the package) stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from socket import socket as Socket
from typing import TYPE_CHECKING, Literal, TypeVar, get_args, overload

from ._classes import COMPAT_MODULE as COMPAT_MODULE
from ._classes import DISPATCHERS as DISPATCHERS
from ._classes import TRANSPORTS as TRANSPORTS
from ._classes import DispatcherName as DispatcherName
from ._classes import TransportName as TransportName
from ._classes import TransportRow as TransportRow
from ._classes import build_classic_servers as build_classic_servers
from ._classes import classic_name as classic_name
from ._classes import new_class
from .acceptors import DEFAULT_MAX_PACKET_SIZE, DatagramAcceptor, StreamAcceptor
from .interfaces import (
    DatagramHandler,
    LineHandler,
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

AddressT = TypeVar("AddressT")
RequestT = TypeVar("RequestT")
LeanT = TypeVar("LeanT")

if TYPE_CHECKING:
    from .compat import TCPServer, UDPServer, UnixDatagramServer, UnixStreamServer

__all__ = (
    # the native API's convenience functions
    "make_tcp_server",
    "make_udp_server",
    "make_unix_datagram_server",
    "make_unix_stream_server",
    # stdlib-style classes
    "server_class",
    # the classic class table (defined in _classes)
    "COMPAT_MODULE",
    "DISPATCHERS",
    "TRANSPORTS",
    "DispatcherName",
    "TransportName",
    "TransportRow",
    "build_classic_servers",
    "classic_name",
)

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
    from . import compat  # lazily: importing factories (or the package) does not load compat

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
    cls: type[TCPServer] = new_class(cls_name, (classic,), namespace, module or __name__)
    return cls


# -- convenience wrappers for the native API ----------------------------------


def make_tcp_server(
    address: InetAddress,
    handler: HandlerFactory[Socket, InetAddress] | None = None,
    *,
    line_handler: LineHandler[InetAddress] | None = None,
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
        line_handler: instead of *handler*, the lean mode of kept
            line-framed connections: a
            :class:`~composable_server.interfaces.LineHandler` whose
            ``handle_line(line, client_address)`` returns each reply,
            served by a :class:`~composable_server.handlers.LineResponder`.
        dispatcher: where handlers run (default: the serving thread).
        verifier, error_policy, timeout_policy: as :class:`Server`.
        reuse_address, reuse_port, backlog, dual_stack: as :class:`TCPTransport`.
        bind_and_activate: bind and listen now.

    Raises:
        TypeError: neither or both of *handler* and *line_handler*.
        AddressError: the address does not fit.
        BindError: the address could not be bound.
    """
    served = _line_handler("make_tcp_server", handler, line_handler)
    transport = TCPTransport(
        address, reuse_address=reuse_address, reuse_port=reuse_port, backlog=backlog, dual_stack=dual_stack
    )
    return Server(
        transport=transport,
        acceptor=StreamAcceptor(),
        handler=served,
        verifier=verifier,
        dispatcher=dispatcher,
        error_policy=error_policy,
        timeout_policy=timeout_policy,
        bind_and_activate=bind_and_activate,
    )


def _one_handler(
    maker: str,
    handler: HandlerFactory[RequestT, AddressT] | None,
    keyword: str,
    lean: LeanT | None,
    serve: Callable[[LeanT], HandlerFactory[RequestT, AddressT]],
) -> HandlerFactory[RequestT, AddressT]:
    """*handler*, or ``serve(lean)`` (the lean mode's handler factory): exactly one."""
    if lean is None:
        if handler is None:
            raise TypeError(f"{maker}() needs a handler or a {keyword}, got neither")
        return handler
    if handler is not None:
        raise TypeError(f"{maker}() takes a handler or a {keyword}, got both")
    return serve(lean)


def _datagram_handler(
    maker: str, handler: HandlerFactory[DatagramRequest, AddressT] | None, lean: DatagramHandler[AddressT] | None
) -> HandlerFactory[DatagramRequest, AddressT]:
    """*handler*, or a :class:`~composable_server.handlers.DatagramResponder` serving *lean*: exactly one."""
    from .handlers import DatagramResponder  # here: the handlers module loads with the lean mode

    return _one_handler(maker, handler, "datagram_handler", lean, DatagramResponder)


def _line_handler(
    maker: str, handler: HandlerFactory[Socket, AddressT] | None, lean: LineHandler[AddressT] | None
) -> HandlerFactory[Socket, AddressT]:
    """*handler*, or a :class:`~composable_server.handlers.LineResponder` serving *lean*: exactly one."""
    from .handlers import LineResponder  # here: the handlers module loads with the lean mode

    return _one_handler(maker, handler, "line_handler", lean, LineResponder)


def make_udp_server(
    address: InetAddress,
    handler: HandlerFactory[DatagramRequest, InetAddress] | None = None,
    *,
    datagram_handler: DatagramHandler[InetAddress] | None = None,
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
        datagram read whole) instead of a backlog, and instead of *handler*
        optionally *datagram_handler*, the lean mode: a
        :class:`~composable_server.interfaces.DatagramHandler` whose
        ``handle_datagram(data, client_address)`` returns each reply,
        served by a :class:`~composable_server.handlers.DatagramResponder`.

    Raises:
        TypeError: neither or both of *handler* and *datagram_handler*.
    """
    served = _datagram_handler("make_udp_server", handler, datagram_handler)
    transport = UDPTransport(address, reuse_address=reuse_address, reuse_port=reuse_port, dual_stack=dual_stack)
    return Server(
        transport=transport,
        acceptor=DatagramAcceptor(max_packet_size),
        handler=served,
        verifier=verifier,
        dispatcher=dispatcher,
        error_policy=error_policy,
        timeout_policy=timeout_policy,
        bind_and_activate=bind_and_activate,
    )


def make_unix_stream_server(
    path: UnixAddress,
    handler: HandlerFactory[Socket, UnixAddress] | None = None,
    *,
    line_handler: LineHandler[UnixAddress] | None = None,
    dispatcher: Dispatcher | None = None,
    verifier: Verifier[Socket, UnixAddress] | None = None,
    error_policy: ErrorPolicy | None = None,
    timeout_policy: TimeoutPolicy | None = None,
    backlog: int = DEFAULT_BACKLOG,
    unlink_on_close: bool = True,
    bind_and_activate: bool = True,
) -> Server[Socket, UnixAddress]:
    """A Unix stream server on the native API.

    Args: as :func:`make_tcp_server` (*line_handler* too); *path* is the
        socket file (or a Linux abstract name), removed on close if
        *unlink_on_close*.

    Raises:
        TypeError: neither or both of *handler* and *line_handler*.
    """
    served = _line_handler("make_unix_stream_server", handler, line_handler)
    transport = UnixStreamTransport(path, backlog=backlog, unlink_on_close=unlink_on_close)
    return Server(
        transport=transport,
        acceptor=StreamAcceptor(),
        handler=served,
        verifier=verifier,
        dispatcher=dispatcher,
        error_policy=error_policy,
        timeout_policy=timeout_policy,
        bind_and_activate=bind_and_activate,
    )


def make_unix_datagram_server(
    path: UnixAddress,
    handler: HandlerFactory[DatagramRequest, UnixAddress] | None = None,
    *,
    datagram_handler: DatagramHandler[UnixAddress] | None = None,
    dispatcher: Dispatcher | None = None,
    verifier: Verifier[DatagramRequest, UnixAddress] | None = None,
    error_policy: ErrorPolicy | None = None,
    timeout_policy: TimeoutPolicy | None = None,
    max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
    unlink_on_close: bool = True,
    bind_and_activate: bool = True,
) -> Server[DatagramRequest, UnixAddress]:
    """A Unix datagram server on the native API; requests are ``(data, socket)``.

    Args: as :func:`make_unix_stream_server`, with *max_packet_size*, and
        *datagram_handler* as for :func:`make_udp_server`.

    Raises:
        TypeError: neither or both of *handler* and *datagram_handler*.
    """
    served = _datagram_handler("make_unix_datagram_server", handler, datagram_handler)
    transport = UnixDatagramTransport(path, unlink_on_close=unlink_on_close)
    return Server(
        transport=transport,
        acceptor=DatagramAcceptor(max_packet_size),
        handler=served,
        verifier=verifier,
        dispatcher=dispatcher,
        error_policy=error_policy,
        timeout_policy=timeout_policy,
        bind_and_activate=bind_and_activate,
    )
