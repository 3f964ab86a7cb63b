# The static interface of composable_server.compat, whose server classes are
# built at run time by composable_server.factories (mypy cannot see those).
# It mirrors typeshed's stdlib/socketserver.pyi, so that code written for
# stdlib socketserver type-checks unchanged, with two deliberate differences:
#   * every server class is a subclass of the engine Server[Any, Any];
#   * RequestHandlerClass accepts any (request, client_address, server)
#     callable, so stdlib handler classes (annotated with
#     socketserver.BaseServer) are accepted too.
# stubtest (.ci/run) checks this file against the runtime module.
import os
import sys
from collections.abc import Callable
from socket import AddressFamily, SocketKind
from socket import socket as _socket
from typing import Any, TypeAlias

from composable_server import handlers as _handlers
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
_InetAddress: TypeAlias = tuple[str, int] | tuple[str, int, int, int]
_UnixAddress: TypeAlias = str | bytes | os.PathLike[str]

class BaseServer(Server[Any, Any]):
    timeout: float | None
    def __init__(self, server_address: Any, RequestHandlerClass: _HandlerClass) -> None: ...
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
    def __init__(
        self, server_address: _InetAddress, RequestHandlerClass: _HandlerClass, bind_and_activate: bool = True
    ) -> None: ...
    def get_request(self) -> tuple[_socket, _RetAddress]: ...

class UDPServer(TCPServer):
    max_packet_size: int
    def get_request(self) -> tuple[tuple[bytes, _socket], _RetAddress]: ...  # type: ignore[override]  # as typeshed: UDPServer subclasses TCPServer

class UnixStreamServer(TCPServer):
    def __init__(  # a path instead of (host, port), as typeshed
        self, server_address: _UnixAddress, RequestHandlerClass: _HandlerClass, bind_and_activate: bool = True
    ) -> None: ...

class UnixDatagramServer(UDPServer):
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

class BaseRequestHandler(_handlers.BaseRequestHandler[Any, Any]): ...
class StreamRequestHandler(_handlers.StreamRequestHandler[Any], BaseRequestHandler): ...
class DatagramRequestHandler(_handlers.DatagramRequestHandler[Any], BaseRequestHandler): ...
