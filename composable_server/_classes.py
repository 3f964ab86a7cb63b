"""The classic class table: the twelve :mod:`socketserver` classes as two tables.

:data:`TRANSPORTS` (TCP, UDP, Unix stream, Unix datagram) x :data:`DISPATCHERS`
(sync, threading, forking), built by :func:`build_classic_servers` when
:mod:`composable_server.compat` is imported.  Each produced class gets the
``__module__``/``__qualname__`` of its compat name, so reprs, pickles and
tracebacks show ``composable_server.compat.ThreadingTCPServer``.

This module sits below both :mod:`composable_server.compat` (which builds its
classes from it) and :mod:`composable_server.factories` (which re-exports it
under the same public names and builds custom classes above compat), and
imports neither: the table is data, the layers above it choose the bases.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Final, Literal, TypeAlias, final

__all__ = (
    "COMPAT_MODULE",
    "DISPATCHERS",
    "TRANSPORTS",
    "DispatcherName",
    "TransportName",
    "TransportRow",
    "build_classic_servers",
    "classic_name",
    "new_class",
)

COMPAT_MODULE: Final = "composable_server.compat"

TransportName: TypeAlias = Literal["tcp", "udp", "unix_stream", "unix_datagram"]
"""A row of :data:`TRANSPORTS`."""

DispatcherName: TypeAlias = Literal["sync", "threading", "forking"]
"""A row of :data:`DISPATCHERS`."""


@final
class TransportRow:
    """One transport of the classic class table (a plain class: attrs would
    cost ~1M instructions at every import of compat, for three fields).

    Attributes:
        class_name: the stdlib class name (``"UDPServer"``).
        parent: the row whose class this one subclasses, as stdlib does
            (``UDPServer(TCPServer)``); None for the root (``TCPServer``),
            which subclasses ``compat.BaseServer``.
        attributes: the stdlib class attributes this class sets, with the
            stdlib values (socketserver.py, 3.11-3.13).
    """

    __slots__ = ("attributes", "class_name", "parent")

    def __init__(self, class_name: str, parent: TransportName | None, attributes: Mapping[str, object]) -> None:
        self.class_name: Final = class_name
        self.parent: Final = parent
        self.attributes: Final = attributes

    def __repr__(self) -> str:
        return f"TransportRow(class_name={self.class_name!r}, parent={self.parent!r}, attributes={self.attributes!r})"


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


def new_class(name: str, bases: tuple[type, ...], namespace: Mapping[str, object], module: str) -> type:
    """A class *name* with *bases* and *namespace*, whose ``__module__`` is *module*."""
    return type(name, bases, {"__module__": module, "__qualname__": name, **namespace})


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
        cls = by_transport[transport] = classes[row.class_name] = new_class(
            row.class_name, (parent,), namespace, module
        )
        for dispatcher in DISPATCHERS:
            mixin = mixins.get(dispatcher)
            if mixin is not None:
                name = classic_name(transport, dispatcher)
                classes[name] = new_class(name, (mixin, cls), {}, module)
    return classes
