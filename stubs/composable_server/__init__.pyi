# The package's public interface, as composable_server/__init__.py exports it.
# mypy reads this file (mypy_path = stubs) only when the package itself is not
# among the checked sources; it exists so that stubs/composable_server/compat.pyi
# is found. stubtest (.ci/run) keeps it equal to the runtime __init__.

from composable_server.acceptors import DatagramAcceptor as DatagramAcceptor
from composable_server.acceptors import StreamAcceptor as StreamAcceptor
from composable_server.dispatchers import ForkingDispatcher as ForkingDispatcher
from composable_server.dispatchers import PoolStatistics as PoolStatistics
from composable_server.dispatchers import SyncDispatcher as SyncDispatcher
from composable_server.dispatchers import ThreadPoolDispatcher as ThreadPoolDispatcher
from composable_server.dispatchers import ThreadingDispatcher as ThreadingDispatcher
from composable_server.exceptions import AddressError as AddressError
from composable_server.exceptions import BindError as BindError
from composable_server.exceptions import DatagramTooLargeError as DatagramTooLargeError
from composable_server.exceptions import LineTooLongError as LineTooLongError
from composable_server.exceptions import PortRangeError as PortRangeError
from composable_server.exceptions import RestartLimitError as RestartLimitError
from composable_server.exceptions import ServerClosedError as ServerClosedError
from composable_server.exceptions import ServerError as ServerError
from composable_server.exceptions import ServerStateError as ServerStateError
from composable_server.exceptions import TLSHandshakeError as TLSHandshakeError
from composable_server.factories import make_tcp_server as make_tcp_server
from composable_server.factories import make_udp_server as make_udp_server
from composable_server.factories import make_unix_datagram_server as make_unix_datagram_server
from composable_server.factories import make_unix_stream_server as make_unix_stream_server
from composable_server.handlers import BaseRequestHandler as BaseRequestHandler
from composable_server.handlers import DatagramRequestHandler as DatagramRequestHandler
from composable_server.handlers import StreamRequestHandler as StreamRequestHandler
from composable_server.interfaces import AcceptErrorPolicy as AcceptErrorPolicy
from composable_server.interfaces import Acceptor as Acceptor
from composable_server.interfaces import ConnectionBudget as ConnectionBudget
from composable_server.interfaces import DatagramRequest as DatagramRequest
from composable_server.interfaces import Dispatcher as Dispatcher
from composable_server.interfaces import ErrorPolicy as ErrorPolicy
from composable_server.interfaces import HandlerFactory as HandlerFactory
from composable_server.interfaces import IPv4Address as IPv4Address
from composable_server.interfaces import IPv6Address as IPv6Address
from composable_server.interfaces import InetAddress as InetAddress
from composable_server.interfaces import Job as Job
from composable_server.interfaces import ReleasingVerifier as ReleasingVerifier
from composable_server.interfaces import TimeoutPolicy as TimeoutPolicy
from composable_server.interfaces import Transport as Transport
from composable_server.interfaces import UnixAddress as UnixAddress
from composable_server.interfaces import Verifier as Verifier
from composable_server.policies import AcceptBackoff as AcceptBackoff
from composable_server.policies import Budget as Budget
from composable_server.policies import ConnectionTimeouts as ConnectionTimeouts
from composable_server.policies import FixedTimeout as FixedTimeout
from composable_server.policies import LoggingErrorPolicy as LoggingErrorPolicy
from composable_server.policies import NoTimeout as NoTimeout
from composable_server.policies import PrintTraceback as PrintTraceback
from composable_server.policies import PrintTracebackErrorPolicy as PrintTracebackErrorPolicy
from composable_server.policies import ReRaise as ReRaise
from composable_server.policies import ReRaiseErrorPolicy as ReRaiseErrorPolicy
from composable_server.policies import RetryImmediately as RetryImmediately
from composable_server.prefork import Prefork as Prefork
from composable_server.prefork import PreforkStatistics as PreforkStatistics
from composable_server.server import DrainReport as DrainReport
from composable_server.server import Server as Server
from composable_server.transports import TCPTransport as TCPTransport
from composable_server.transports import TLSStatistics as TLSStatistics
from composable_server.transports import TLSTransport as TLSTransport
from composable_server.transports import UDPTransport as UDPTransport
from composable_server.transports import UnixDatagramTransport as UnixDatagramTransport
from composable_server.transports import UnixStreamTransport as UnixStreamTransport
from composable_server.verifiers import AllowAll as AllowAll
from composable_server.verifiers import CIDRVerifier as CIDRVerifier
from composable_server.verifiers import ConnectionCapStatistics as ConnectionCapStatistics
from composable_server.verifiers import ConnectionCapVerifier as ConnectionCapVerifier
from composable_server.verifiers import PeerCredentials as PeerCredentials
from composable_server.verifiers import PeerCredentialsVerifier as PeerCredentialsVerifier
from composable_server.verifiers import RateLimitStatistics as RateLimitStatistics
from composable_server.verifiers import RateLimitVerifier as RateLimitVerifier
from composable_server.verifiers import all_of as all_of
from composable_server.verifiers import allow_networks as allow_networks
from composable_server.verifiers import any_of as any_of
from composable_server.verifiers import client_ip as client_ip
from composable_server.verifiers import deny_networks as deny_networks
from composable_server.verifiers import peer_credentials as peer_credentials
from composable_server.verifiers import per_ip_cap as per_ip_cap
from composable_server.verifiers import rate_limit as rate_limit

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
