"""composable_server: Python's socketserver, assembled from typed components.

A server is built from small, swappable components (see
:mod:`composable_server.interfaces`) instead of inherited from a class tree::

    from composable_server import Server, StreamAcceptor, TCPTransport, ThreadingDispatcher

    server = Server(
        transport=TCPTransport(("127.0.0.1", 9999)),
        acceptor=StreamAcceptor(),
        handler=UpperCaseHandler,
        dispatcher=ThreadingDispatcher(),
    )
    server.serve_forever()

The stdlib-compatible classes live in :mod:`composable_server.compat`; the
in-memory fakes for unit tests in :mod:`composable_server.testing`.  Every
name here is imported on first use (PEP 562), so ``import composable_server``
costs next to nothing, and ``composable_server.compat`` (or the pytest plugin,
which load the package first) pays only for the modules it uses.
"""

# Not typing.TYPE_CHECKING: importing typing would cost the package as much as
# everything else here (~40M instructions, as much as the interpreter's own
# start), and the command line's `--help` needs none of it.  mypy treats any
# name TYPE_CHECKING as true; `del` keeps it out of the package namespace.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from .acceptors import DatagramAcceptor as DatagramAcceptor
    from .acceptors import StreamAcceptor as StreamAcceptor
    from .dispatchers import ForkingDispatcher as ForkingDispatcher
    from .dispatchers import PoolStatistics as PoolStatistics
    from .dispatchers import SyncDispatcher as SyncDispatcher
    from .dispatchers import ThreadPoolDispatcher as ThreadPoolDispatcher
    from .dispatchers import ThreadingDispatcher as ThreadingDispatcher
    from .exceptions import AddressError as AddressError
    from .exceptions import BindError as BindError
    from .exceptions import DatagramTooLargeError as DatagramTooLargeError
    from .exceptions import LineTooLongError as LineTooLongError
    from .exceptions import PortRangeError as PortRangeError
    from .exceptions import RestartLimitError as RestartLimitError
    from .exceptions import ServerClosedError as ServerClosedError
    from .exceptions import ServerError as ServerError
    from .exceptions import ServerStateError as ServerStateError
    from .exceptions import TLSHandshakeError as TLSHandshakeError
    from .factories import make_tcp_server as make_tcp_server
    from .factories import make_udp_server as make_udp_server
    from .factories import make_unix_datagram_server as make_unix_datagram_server
    from .factories import make_unix_stream_server as make_unix_stream_server
    from .handlers import BaseRequestHandler as BaseRequestHandler
    from .handlers import DatagramRequestHandler as DatagramRequestHandler
    from .handlers import StreamRequestHandler as StreamRequestHandler
    from .interfaces import AcceptErrorPolicy as AcceptErrorPolicy
    from .interfaces import Acceptor as Acceptor
    from .interfaces import ConnectionBudget as ConnectionBudget
    from .interfaces import DatagramRequest as DatagramRequest
    from .interfaces import Dispatcher as Dispatcher
    from .interfaces import ErrorPolicy as ErrorPolicy
    from .interfaces import HandlerFactory as HandlerFactory
    from .interfaces import IPv4Address as IPv4Address
    from .interfaces import IPv6Address as IPv6Address
    from .interfaces import InetAddress as InetAddress
    from .interfaces import Job as Job
    from .interfaces import Observer as Observer
    from .observers import BaseObserver as BaseObserver
    from .interfaces import ReleasingVerifier as ReleasingVerifier
    from .interfaces import TimeoutPolicy as TimeoutPolicy
    from .interfaces import Transport as Transport
    from .interfaces import UnixAddress as UnixAddress
    from .interfaces import Verifier as Verifier
    from .policies import AcceptBackoff as AcceptBackoff
    from .policies import Budget as Budget
    from .policies import ConnectionTimeouts as ConnectionTimeouts
    from .policies import FixedTimeout as FixedTimeout
    from .policies import LoggingErrorPolicy as LoggingErrorPolicy
    from .policies import NoTimeout as NoTimeout
    from .policies import PrintTraceback as PrintTraceback
    from .policies import PrintTracebackErrorPolicy as PrintTracebackErrorPolicy
    from .policies import ReRaise as ReRaise
    from .policies import ReRaiseErrorPolicy as ReRaiseErrorPolicy
    from .policies import RetryImmediately as RetryImmediately
    from .prefork import Prefork as Prefork
    from .prefork import PreforkStatistics as PreforkStatistics
    from .server import DrainReport as DrainReport
    from .server import Server as Server
    from .transports import TCPTransport as TCPTransport
    from .transports import TLSStatistics as TLSStatistics
    from .transports import TLSTransport as TLSTransport
    from .transports import UDPTransport as UDPTransport
    from .transports import UnixDatagramTransport as UnixDatagramTransport
    from .transports import UnixStreamTransport as UnixStreamTransport
    from .verifiers import AllowAll as AllowAll
    from .verifiers import CIDRVerifier as CIDRVerifier
    from .verifiers import ConnectionCapStatistics as ConnectionCapStatistics
    from .verifiers import ConnectionCapVerifier as ConnectionCapVerifier
    from .verifiers import PeerCredentials as PeerCredentials
    from .verifiers import PeerCredentialsVerifier as PeerCredentialsVerifier
    from .verifiers import RateLimitStatistics as RateLimitStatistics
    from .verifiers import RateLimitVerifier as RateLimitVerifier
    from .verifiers import all_of as all_of
    from .verifiers import allow_networks as allow_networks
    from .verifiers import any_of as any_of
    from .verifiers import client_ip as client_ip
    from .verifiers import deny_networks as deny_networks
    from .verifiers import peer_credentials as peer_credentials
    from .verifiers import per_ip_cap as per_ip_cap
    from .verifiers import rate_limit as rate_limit
del TYPE_CHECKING

__all__ = (
    # the engine
    "Server",
    "DrainReport",
    # convenience: a server for one family (composable_server.factories; loaded on first use)
    "make_tcp_server",
    "make_udp_server",
    "make_unix_stream_server",
    "make_unix_datagram_server",
    # contracts: one Protocol per component role (composable_server.interfaces)
    "Transport",
    "Acceptor",
    "Verifier",
    "ReleasingVerifier",
    "Dispatcher",
    "Job",
    "Observer",
    "ErrorPolicy",
    "TimeoutPolicy",
    "ConnectionBudget",
    "AcceptErrorPolicy",
    "HandlerFactory",
    # request and address types
    "DatagramRequest",
    "InetAddress",
    "IPv4Address",
    "IPv6Address",
    "UnixAddress",
    # transports
    "TCPTransport",
    "UDPTransport",
    "UnixStreamTransport",
    "UnixDatagramTransport",
    "TLSTransport",
    "TLSStatistics",
    # acceptors
    "StreamAcceptor",
    "DatagramAcceptor",
    # verifiers
    "AllowAll",
    "CIDRVerifier",
    "ConnectionCapVerifier",
    "ConnectionCapStatistics",
    "RateLimitVerifier",
    "RateLimitStatistics",
    "PeerCredentialsVerifier",
    "PeerCredentials",
    "all_of",
    "any_of",
    "allow_networks",
    "deny_networks",
    "client_ip",
    "per_ip_cap",
    "rate_limit",
    "peer_credentials",
    # dispatchers
    "SyncDispatcher",
    "ThreadingDispatcher",
    "ThreadPoolDispatcher",
    "PoolStatistics",
    "ForkingDispatcher",
    # prefork: worker processes on one socket (loaded on first use)
    "Prefork",
    "PreforkStatistics",
    # error policies (PrintTraceback and ReRaise: the older names)
    "PrintTracebackErrorPolicy",
    "LoggingErrorPolicy",
    "ReRaiseErrorPolicy",
    "PrintTraceback",
    "ReRaise",
    # timeout policies
    "NoTimeout",
    "FixedTimeout",
    "ConnectionTimeouts",
    "Budget",
    # accept-error policies
    "AcceptBackoff",
    "RetryImmediately",
    # handlers
    "BaseObserver",
    "BaseRequestHandler",
    "StreamRequestHandler",
    "DatagramRequestHandler",
    # errors
    "ServerError",
    "AddressError",
    "BindError",
    "ServerClosedError",
    "ServerStateError",
    "TLSHandshakeError",
    "LineTooLongError",
    "DatagramTooLargeError",
    "PortRangeError",
    "RestartLimitError",
)

# PEP 562: every public name is loaded on first use, so importing the package
# (or a submodule such as composable_server.compat or .pytest_plugin, which
# loads the package first) pays only for the modules it uses; name -> module.
_LAZY: dict[str, str] = {
    "DatagramAcceptor": "acceptors",
    "StreamAcceptor": "acceptors",
    "ForkingDispatcher": "dispatchers",
    "PoolStatistics": "dispatchers",
    "SyncDispatcher": "dispatchers",
    "ThreadPoolDispatcher": "dispatchers",
    "ThreadingDispatcher": "dispatchers",
    "AddressError": "exceptions",
    "BindError": "exceptions",
    "DatagramTooLargeError": "exceptions",
    "LineTooLongError": "exceptions",
    "PortRangeError": "exceptions",
    "RestartLimitError": "exceptions",
    "ServerClosedError": "exceptions",
    "ServerError": "exceptions",
    "ServerStateError": "exceptions",
    "TLSHandshakeError": "exceptions",
    "make_tcp_server": "factories",
    "make_udp_server": "factories",
    "make_unix_datagram_server": "factories",
    "make_unix_stream_server": "factories",
    "BaseRequestHandler": "handlers",
    "DatagramRequestHandler": "handlers",
    "StreamRequestHandler": "handlers",
    "AcceptErrorPolicy": "interfaces",
    "Acceptor": "interfaces",
    "ConnectionBudget": "interfaces",
    "DatagramRequest": "interfaces",
    "Dispatcher": "interfaces",
    "ErrorPolicy": "interfaces",
    "HandlerFactory": "interfaces",
    "IPv4Address": "interfaces",
    "IPv6Address": "interfaces",
    "InetAddress": "interfaces",
    "Job": "interfaces",
    "Observer": "interfaces",
    "BaseObserver": "observers",
    "ReleasingVerifier": "interfaces",
    "TimeoutPolicy": "interfaces",
    "Transport": "interfaces",
    "UnixAddress": "interfaces",
    "Verifier": "interfaces",
    "AcceptBackoff": "policies",
    "Budget": "policies",
    "ConnectionTimeouts": "policies",
    "FixedTimeout": "policies",
    "LoggingErrorPolicy": "policies",
    "NoTimeout": "policies",
    "PrintTraceback": "policies",
    "PrintTracebackErrorPolicy": "policies",
    "ReRaise": "policies",
    "ReRaiseErrorPolicy": "policies",
    "RetryImmediately": "policies",
    "Prefork": "prefork",
    "PreforkStatistics": "prefork",
    "DrainReport": "server",
    "Server": "server",
    "TCPTransport": "transports",
    "TLSStatistics": "transports",
    "TLSTransport": "transports",
    "UDPTransport": "transports",
    "UnixDatagramTransport": "transports",
    "UnixStreamTransport": "transports",
    "AllowAll": "verifiers",
    "CIDRVerifier": "verifiers",
    "ConnectionCapStatistics": "verifiers",
    "ConnectionCapVerifier": "verifiers",
    "PeerCredentials": "verifiers",
    "PeerCredentialsVerifier": "verifiers",
    "RateLimitStatistics": "verifiers",
    "RateLimitVerifier": "verifiers",
    "all_of": "verifiers",
    "allow_networks": "verifiers",
    "any_of": "verifiers",
    "client_ip": "verifiers",
    "deny_networks": "verifiers",
    "peer_credentials": "verifiers",
    "per_ip_cap": "verifiers",
    "rate_limit": "verifiers",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value: object = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
