# The static interface of composable_server.compat, whose server classes are
# built at run time by composable_server.factories (mypy cannot see those).
# It sits next to compat.py (type checkers prefer a .pyi to the .py beside it),
# so it reaches mypy in every install mode: wheel, sdist and editable alike.
# It mirrors typeshed's stdlib/socketserver.pyi, so that code written for
# stdlib socketserver type-checks unchanged, with deliberate differences:
#   * every server class is a subclass of the engine Server[Any, Any];
#   * RequestHandlerClass accepts any (request, client_address, server)
#     callable, so stdlib handler classes (annotated with
#     socketserver.BaseServer) are accepted too;
#   * addresses are what compat accepts and returns: str hosts only (a bytes
#     host raises AddressError), and Unix paths may be os.PathLike.
# Wherever typeshed types a member concretely, this file is at least as
# precise (tests/unit/test_compat_stub.py compares the two member by member);
# stubtest (.ci/run) checks it against the runtime module.
import os
import sys
from _typeshed import ReadableBuffer
from collections.abc import Callable, Sequence
from socket import AddressFamily, SocketKind
from socket import socket as _socket
from typing import Any, TypeAlias

from composable_server import handlers as _handlers
from composable_server.interfaces import Observer
from composable_server.server import Server

__all__: tuple[str, ...] = (
    "BaseServer",
    "TCPServer",
    "UDPServer",
    "ThreadingUDPServer",
    "ThreadingTCPServer",
    "BaseRequestHandler",
    "StreamRequestHandler",
    "DatagramRequestHandler",
    "ThreadingMixIn",
)
if sys.platform != "win32":
    __all__ += (
        "ForkingUDPServer",
        "ForkingTCPServer",
        "ForkingMixIn",
        "UnixStreamServer",
        "UnixDatagramServer",
        "ThreadingUnixStreamServer",
        "ThreadingUnixDatagramServer",
    )
    if sys.version_info >= (3, 12):
        __all__ += ("ForkingUnixStreamServer", "ForkingUnixDatagramServer")

_RequestType: TypeAlias = _socket | tuple[bytes, _socket]
# typeshed's _RetAddress is Any too.
_RetAddress: TypeAlias = Any
_HandlerClass: TypeAlias = Callable[[Any, Any, Any], object]
# Any address BaseServer takes (typeshed's _socket._Address).
_Address: TypeAlias = tuple[Any, ...] | str | ReadableBuffer
# What an AF_INET/AF_INET6 server takes and reports (getsockname()).
_InetAddress: TypeAlias = tuple[str, int] | tuple[str, int, int, int]
# A Unix server's path as given (kept until bound, as stdlib), or as bound.
_UnixAddress: TypeAlias = str | bytes | os.PathLike[str]

class BaseServer(Server[Any, Any]):
    server_address: _Address
    timeout: float | None
    observers: Sequence[Observer]
    def __init__(self, server_address: _Address, RequestHandlerClass: _HandlerClass) -> None: ...
    @property
    def RequestHandlerClass(self) -> _HandlerClass: ...
    @RequestHandlerClass.setter
    def RequestHandlerClass(self, value: _HandlerClass) -> None: ...
    @property
    def socket(self) -> _socket: ...
    @socket.setter
    def socket(self, value: _socket) -> None: ...
    def server_bind(self) -> None: ...
    def server_activate(self) -> None: ...
    def get_request(self) -> tuple[Any, Any]: ...
    def finish_request(self, request: _RequestType, client_address: _RetAddress) -> None: ...
    def handle_error(self, request: _RequestType, client_address: _RetAddress) -> None: ...
    def process_request(self, request: _RequestType, client_address: _RetAddress) -> None: ...
    def verify_request(self, request: _RequestType, client_address: _RetAddress) -> bool: ...
    def shutdown_request(self, request: _RequestType) -> None: ...
    def close_request(self, request: _RequestType) -> None: ...

class TCPServer(BaseServer):
    # typeshed says int; the enum types let subclasses write
    # `address_family = socket.AF_INET6` under mypy's mutable-override check.
    address_family: AddressFamily
    socket_type: SocketKind
    request_queue_size: int
    allow_reuse_address: bool
    allow_reuse_port: bool
    server_address: _InetAddress  # type: ignore[mutable-override]  # narrower than BaseServer's, as typeshed
    def __init__(
        self, server_address: _InetAddress, RequestHandlerClass: _HandlerClass, bind_and_activate: bool = True
    ) -> None: ...
    def get_request(self) -> tuple[_socket, _RetAddress]: ...

class UDPServer(TCPServer):
    max_packet_size: int
    def get_request(self) -> tuple[tuple[bytes, _socket], _RetAddress]: ...  # type: ignore[override]  # as typeshed: UDPServer subclasses TCPServer

class UnixStreamServer(TCPServer):
    server_address: _UnixAddress  # type: ignore[assignment]  # a path instead of (host, port), as typeshed
    def __init__(  # a path instead of (host, port), as typeshed
        self, server_address: _UnixAddress, RequestHandlerClass: _HandlerClass, bind_and_activate: bool = True
    ) -> None: ...

class UnixDatagramServer(UDPServer):
    server_address: _UnixAddress  # type: ignore[assignment]  # a path instead of (host, port), as typeshed
    def __init__(  # a path instead of (host, port), as typeshed
        self, server_address: _UnixAddress, RequestHandlerClass: _HandlerClass, bind_and_activate: bool = True
    ) -> None: ...

class ThreadingMixIn:
    daemon_threads: bool
    block_on_close: bool
    def process_request_thread(self, request: _RequestType, client_address: _RetAddress) -> None: ...
    def process_request(self, request: _RequestType, client_address: _RetAddress) -> None: ...
    def server_close(self) -> None: ...

class ForkingMixIn:
    timeout: float | None
    active_children: set[int] | None
    max_children: int
    block_on_close: bool
    def collect_children(self, *, blocking: bool = False) -> None: ...
    def handle_timeout(self) -> None: ...
    def service_actions(self) -> None: ...
    def process_request(self, request: _RequestType, client_address: _RetAddress) -> None: ...
    def server_close(self) -> None: ...

class ThreadingTCPServer(ThreadingMixIn, TCPServer): ...
class ThreadingUDPServer(ThreadingMixIn, UDPServer): ...
class ThreadingUnixStreamServer(ThreadingMixIn, UnixStreamServer): ...
class ThreadingUnixDatagramServer(ThreadingMixIn, UnixDatagramServer): ...
class ForkingTCPServer(ForkingMixIn, TCPServer): ...
class ForkingUDPServer(ForkingMixIn, UDPServer): ...
class ForkingUnixStreamServer(ForkingMixIn, UnixStreamServer): ...
class ForkingUnixDatagramServer(ForkingMixIn, UnixDatagramServer): ...

# The core handlers, typed as typeshed types stdlib's: a compat handler is
# handed a compat server (the core handlers, composable_server.handlers, are
# the ones for the engine Server).
class BaseRequestHandler(_handlers.BaseRequestHandler[Any, Any]):
    server: BaseServer  # type: ignore[mutable-override]  # a compat handler is handed a compat server
    def __init__(self, request: _RequestType, client_address: _RetAddress, server: BaseServer) -> None: ...

class StreamRequestHandler(_handlers.StreamRequestHandler[Any], BaseRequestHandler):
    def __init__(self, request: _socket, client_address: _RetAddress, server: BaseServer) -> None: ...

class DatagramRequestHandler(_handlers.DatagramRequestHandler[Any], BaseRequestHandler):
    def __init__(self, request: tuple[bytes, _socket], client_address: _RetAddress, server: BaseServer) -> None: ...
