"""Verifiers: may this request be served?

* :class:`AllowAll` admits everything (the stdlib behaviour);
* :class:`CIDRVerifier`, made by :func:`allow_networks` /
  :func:`deny_networks`, admits or refuses clients by IP network (IPv4 and
  IPv6; an IPv4-mapped client is judged as IPv4);
* :func:`all_of` / :func:`any_of` combine verifiers into a policy that reads
  as one: ``all_of(deny_list, per_ip_cap)``.  Nested combinators of the same
  kind are flattened, so the repr stays readable.
* :class:`ConnectionCapVerifier` (:func:`per_ip_cap`) - at most N concurrent
  requests per client IP; told when a request ends through ``release``;
* :class:`RateLimitVerifier` (:func:`rate_limit`) - a token bucket per client
  IP, with bounded state;
* :class:`PeerCredentialsVerifier` - Unix-socket peers by uid/gid
  (``SO_PEERCRED``).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from socket import socket as Socket
from typing import Final, Literal, TypeVar, cast, final

import attrs

from ._allowall import AllowAll
from ._util import LogLimiter
from .exceptions import AddressError
from .interfaces import Verifier

__all__ = (
    "DEFAULT_MAX_CLIENTS",
    "REFUSAL_LOG_INTERVAL",
    "AllowAll",
    "CIDRVerifier",
    "ConnectionCapStatistics",
    "ConnectionCapVerifier",
    "PeerCredentials",
    "PeerCredentialsVerifier",
    "RateLimitStatistics",
    "RateLimitVerifier",
    "all_of",
    "allow_networks",
    "any_of",
    "client_ip",
    "deny_networks",
    "peer_credentials",
    "per_ip_cap",
    "rate_limit",
    "releaser",
)

_logger = logging.getLogger("composable_server.verifiers")

RequestT = TypeVar("RequestT")
AddressT = TypeVar("AddressT")


def _releasers(verifiers: tuple[Verifier[object, object], ...]) -> tuple[Callable[[object], None], ...]:
    return tuple(r for v in verifiers if (r := releaser(v)) is not None)


def releaser(verifier: object) -> Callable[[object], None] | None:
    """The ``release`` method of *verifier* if it needs one called, else None.

    The server asks this once, at construction: a combinator none of whose
    members counts requests needs no call, so servers that do not use a
    :class:`~composable_server.interfaces.ReleasingVerifier` pay nothing per
    request.
    """
    if isinstance(verifier, _Combinator):
        return verifier.release if verifier.releasers else None
    release: object = getattr(verifier, "release", None)
    return cast("Callable[[object], None]", release) if callable(release) else None


_CombinatorName = Literal["all_of", "any_of"]


@final
@attrs.frozen(repr=False)
class _Combinator:
    """``all_of(...)`` or ``any_of(...)``: one verifier made of several."""

    name: _CombinatorName
    verifiers: tuple[Verifier[object, object], ...]
    # Short-circuits: with all_of, later verifiers (rate limits, caps) see
    # only requests the earlier ones admitted.
    _admits: Callable[[Iterable[bool]], bool] = attrs.field(
        init=False, eq=False, default=attrs.Factory(lambda self: all if self.name == "all_of" else any, takes_self=True)
    )
    releasers: tuple[Callable[[object], None], ...] = attrs.field(
        init=False, eq=False, default=attrs.Factory(lambda self: _releasers(self.verifiers), takes_self=True)
    )

    def verify(self, request: object, client_address: object) -> bool:
        return self._admits(v.verify(request, client_address) for v in self.verifiers)

    def release(self, request: object) -> None:
        # Every member is told: a cap admitted by an earlier member and refused
        # by a later one still holds a slot until the request is finished.
        for release in self.releasers:
            release(request)

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(map(repr, self.verifiers))})"


def _combine(name: _CombinatorName, verifiers: tuple[object, ...]) -> _Combinator:
    """The combinator *name* of *verifiers*, members of the same kind flattened into it."""
    flat: list[Verifier[object, object]] = []
    for v in verifiers:
        if isinstance(v, _Combinator) and v.name == name:
            flat.extend(v.verifiers)
        else:
            flat.append(v)  # type: ignore[arg-type]  # typed at the public signature
    return _Combinator(name, tuple(flat))


def all_of(*verifiers: Verifier[RequestT, AddressT]) -> Verifier[RequestT, AddressT]:
    """A verifier that admits a request only if every one of *verifiers* does.

    Verifiers are asked in order and the first refusal stops the check.
    ``all_of()`` with no verifiers admits everything.
    """
    return _combine("all_of", verifiers)


def any_of(*verifiers: Verifier[RequestT, AddressT]) -> Verifier[RequestT, AddressT]:
    """A verifier that admits a request if at least one of *verifiers* does.

    ``any_of()`` with no verifiers refuses everything.
    """
    return _combine("any_of", verifiers)


# -- CIDR admission --------------------------------------------------------------

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# The IPv4-mapped IPv6 block (RFC 4291 s. 2.5.5.2): a dual-stack socket reports
# an IPv4 client as ::ffff:a.b.c.d.  Such clients and networks are judged as IPv4.
_V4_MAPPED: Final = ipaddress.IPv6Network("::ffff:0:0/96")


def _parse_network(cidr: object) -> _Network:
    """Parse one CIDR string (or take a network object) as a network.

    Host bits are masked (``"10.1.2.3/8"`` is ``10.0.0.0/8``), as nginx and
    iptables do; a bare address is a one-host network.  A network inside
    ``::ffff:0:0/96`` becomes the IPv4 network it maps.

    Raises:
        AddressError: not a str or network object, or not a valid network;
            the message names the value.
    """
    if isinstance(cidr, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        network: _Network = cidr
    elif isinstance(cidr, str):
        try:
            network = ipaddress.ip_network(cidr.strip(), strict=False)
        except ValueError as exc:
            raise AddressError(f"invalid CIDR network {cidr!r}: {exc}", address=cidr) from exc
    else:
        raise AddressError(
            f"expected a CIDR network as a str such as '10.0.0.0/8', got {cidr!r} ({type(cidr).__name__})",
            address=cidr,
        )
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96 and network.subnet_of(_V4_MAPPED):
        mapped = network.network_address.ipv4_mapped
        assert mapped is not None  # inside ::ffff:0:0/96, so it maps
        return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


def client_ip(client_address: object) -> _IPAddress | None:
    """The client's IP address, or None when *client_address* is not an IP
    address (a Unix socket path, ``None`` for an unnamed Unix client).

    An IPv4-mapped IPv6 address (``::ffff:a.b.c.d``, from a dual-stack
    socket) is returned as the IPv4 address it maps; an IPv6 zone
    (``fe80::1%eth0``) is kept.
    """
    if not isinstance(client_address, tuple) or len(client_address) not in (2, 4):
        return None
    host = client_address[0]
    if not isinstance(host, str):
        return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


_Mode = Literal["allow", "deny"]


def _networks(value: tuple[object, ...]) -> tuple[_Network, ...]:
    return tuple(_parse_network(v) for v in value)


@final
@attrs.frozen(repr=False)
class CIDRVerifier:
    """A verifier that admits or refuses clients by IP network.

    Build it with :func:`allow_networks` or :func:`deny_networks`.

    * ``mode="allow"``: admit a client inside any of *networks*, refuse the rest;
    * ``mode="deny"``: refuse a client inside any of *networks*, admit the rest.

    IPv4 and IPv6 networks may be mixed; an IPv4-mapped IPv6 client
    (``::ffff:a.b.c.d``) is judged as the IPv4 address it maps.  A client
    without an IP address (a Unix socket) is not in any network: an allow
    list refuses it and a deny list admits it, unless *non_ip* says otherwise.
    Refusals are logged at DEBUG on the ``composable_server.verifiers`` logger
    with the reason.

    Args:
        networks: CIDR strings (``"10.0.0.0/8"``, ``"::1"``, ``"fe80::/10"``)
            or :mod:`ipaddress` network objects.
        mode: ``"allow"`` or ``"deny"``.
        non_ip: admit (True) or refuse (False) clients without an IP address;
            None (default) means "refuse" for an allow list and "admit" for a
            deny list.

    Raises:
        AddressError: a string is not a valid network (the message names it).
    """

    networks: tuple[_Network, ...] = attrs.field(converter=_networks)
    mode: _Mode = attrs.field(default="allow", validator=attrs.validators.in_(("allow", "deny")))
    non_ip: bool | None = attrs.field(default=None, kw_only=True)

    def match(self, client_address: object) -> _Network | None:
        """The first of :attr:`networks` that contains the client's IP, or None."""
        ip = client_ip(client_address)
        if ip is None:
            return None
        for network in self.networks:
            # Membership across versions is False, not an error.
            if ip.version == network.version and ip in network:
                return network
        return None

    def verify(self, request: object, client_address: object) -> bool:
        """Return True if the client's address may be served under this list."""
        ip = client_ip(client_address)
        if ip is None:
            admitted = self.mode == "deny" if self.non_ip is None else self.non_ip
            if not admitted:
                _logger.debug("refused %r: not an IP client (%s list)", client_address, self.mode)
            return admitted
        network = self.match(client_address)
        if self.mode == "allow":
            if network is None:
                _logger.debug("refused %s: in no allowed network", ip)
                return False
            return True
        if network is not None:
            _logger.debug("refused %s: in denied network %s", ip, network)
            return False
        return True

    def __repr__(self) -> str:
        nets = ", ".join(repr(str(n)) for n in self.networks)
        return f"{self.mode}_networks({nets})"


def allow_networks(*cidrs: str | _Network) -> CIDRVerifier:
    """A verifier that admits only clients inside one of *cidrs*.

    ``allow_networks("127.0.0.0/8", "::1")`` admits loopback clients only.
    Unix-socket clients are refused.

    Raises:
        AddressError: a string is not a valid network.
    """
    return CIDRVerifier(cidrs, "allow")


def deny_networks(*cidrs: str | _Network) -> CIDRVerifier:
    """A verifier that refuses clients inside any of *cidrs* and admits the rest.

    ``all_of(deny_networks("10.0.0.0/8"), allow_networks("10.0.0.0/8"))`` is a
    policy: refuse the first list, then admit only the second.  Unix-socket
    clients are admitted.

    Raises:
        AddressError: a string is not a valid network.
    """
    return CIDRVerifier(cidrs, "deny")


# -- Connection caps and rate limits ---------------------------------------------------

# The key a client is counted under: its IP address, or for IPv6 with a
# prefix shorter than 128 the first address of its network (one host
# usually holds a whole /64, RFC 7421, so per-address limits are easy to
# dodge over IPv6).
_ClientKey = ipaddress.IPv4Address | ipaddress.IPv6Address


def _client_key(client_address: object, ipv6_prefix: int) -> _ClientKey | None:
    ip = client_ip(client_address)
    if ip is None or ipv6_prefix == 128 or ip.version == 4:
        return ip
    shift = 128 - ipv6_prefix
    return ipaddress.IPv6Address(int(ip) >> shift << shift)


def _describe(key: _ClientKey, ipv6_prefix: int) -> str:
    return f"{key}/{ipv6_prefix}" if key.version == 6 and ipv6_prefix != 128 else str(key)


def _check_prefix(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value <= 128:
        raise ValueError(f"{attribute.name} must be in 0..128, got {value!r}")


# Refusals under attack come in floods: at most one record per this many
# seconds per verifier, with the number left out since.
REFUSAL_LOG_INTERVAL: Final = 10.0


def _more(skipped: int) -> str:
    return f" ({skipped} more refusals since the last report)" if skipped else ""


@final
@attrs.frozen
class ConnectionCapStatistics:
    """A snapshot of a :class:`ConnectionCapVerifier`.

    Attributes:
        admitted: requests admitted so far.
        refused: requests refused at the cap so far.
        connections: requests admitted and not yet finished.
        clients: clients (IP addresses or IPv6 networks) with at least one
            such request.
    """

    admitted: int
    refused: int
    connections: int
    clients: int


@final
@attrs.frozen
class _CapEntry:
    request_id: int
    fd: int | None
    key: _ClientKey


def _fileno(request: object) -> int | None:
    if isinstance(request, Socket):
        fd = request.fileno()
        return fd if fd >= 0 else None
    return None


@final
@attrs.define(eq=False, repr=False)
class ConnectionCapVerifier:
    """A verifier that admits at most *limit* concurrent requests per client IP.

    Build it with :func:`per_ip_cap`.  It learns that a request ended
    through :meth:`release`, which the :class:`~composable_server.server.Server`
    calls for every request it finishes (see
    :class:`~composable_server.interfaces.ReleasingVerifier`).  Clients
    without an IP address (Unix sockets) are admitted and not counted.

    A request is recognised at release by its descriptor (so the TLS socket
    that replaced a plain one still counts as the same request) or, once the
    descriptor is gone, by identity.  A descriptor number that comes back in a
    new connection proves the old one closed, so even a release that never
    came cannot leave a client locked out for longer than that.

    Under :class:`~composable_server.dispatchers.ForkingDispatcher` the parent
    closes its copy of each connection as soon as the child has it, which is
    the end of the request as far as the parent can see: the cap then counts
    only connections not yet handed to a child.  Bound a forking server with
    ``max_children`` instead (or use a threading or pool dispatcher).

    Refusals are counted (:meth:`statistics`) and logged at WARNING on the
    ``composable_server.verifiers`` logger, at most once per *log_interval*.

    Args:
        limit: the most concurrent requests one client may have.
        ipv6_prefix: count IPv6 clients per network of this prefix length
            (64: per /64); 128 counts each address.
        log_interval: seconds between two refusal records.
        clock: a monotonic clock, for the log interval (injectable for tests).
    """

    limit: int = attrs.field(validator=attrs.validators.ge(1))
    ipv6_prefix: int = attrs.field(default=128, kw_only=True, validator=_check_prefix)
    log_interval: float = attrs.field(default=REFUSAL_LOG_INTERVAL, kw_only=True)
    clock: Callable[[], float] = attrs.field(default=time.monotonic, kw_only=True)
    logger: logging.Logger = attrs.field(default=_logger, kw_only=True)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    _active: dict[_ClientKey, int] = attrs.field(init=False, factory=dict)
    _by_fd: dict[int, _CapEntry] = attrs.field(init=False, factory=dict)
    _by_id: dict[int, _CapEntry] = attrs.field(init=False, factory=dict)
    _admitted: int = attrs.field(init=False, default=0)
    _refused: int = attrs.field(init=False, default=0)
    _log: LogLimiter = attrs.field(
        init=False, default=attrs.Factory(lambda self: LogLimiter(self.log_interval), takes_self=True)
    )

    def verify(self, request: object, client_address: object) -> bool:
        """Admit the request unless its client already has *limit* requests in flight."""
        key = _client_key(client_address, self.ipv6_prefix)
        if key is None:
            return True
        fd = _fileno(request)
        with self._lock:
            if fd is not None and (stale := self._by_fd.get(fd)) is not None:
                self._remove(stale)  # that descriptor was closed: its request is over
            count = self._active.get(key, 0)
            if count >= self.limit:
                self._refused += 1
                skipped = self._log.due(self.clock())
            else:
                self._active[key] = count + 1
                self._admitted += 1
                entry = _CapEntry(id(request), fd, key)
                self._by_id[entry.request_id] = entry
                if fd is not None:
                    self._by_fd[fd] = entry
                return True
        if skipped is not None:
            self.logger.warning(
                "refused %s: %d concurrent connections, the per-client limit%s",
                _describe(key, self.ipv6_prefix),
                count,
                _more(skipped),
            )
        return False

    def release(self, request: object) -> None:
        """Called when a request is finished: free its slot if it holds one."""
        fd = _fileno(request)
        with self._lock:
            entry = self._by_fd.get(fd) if fd is not None else None
            if entry is None:
                entry = self._by_id.get(id(request))
            if entry is not None:
                self._remove(entry)

    def _remove(self, entry: _CapEntry) -> None:
        if self._by_id.get(entry.request_id) is entry:
            del self._by_id[entry.request_id]
        if entry.fd is not None and self._by_fd.get(entry.fd) is entry:
            del self._by_fd[entry.fd]
        count = self._active[entry.key] - 1
        if count:
            self._active[entry.key] = count
        else:
            del self._active[entry.key]

    def connections(self, client_address: object) -> int:
        """How many requests from *client_address*'s client are in flight."""
        key = _client_key(client_address, self.ipv6_prefix)
        with self._lock:
            return 0 if key is None else self._active.get(key, 0)

    def statistics(self) -> ConnectionCapStatistics:
        """A snapshot of the counts."""
        with self._lock:
            return ConnectionCapStatistics(
                admitted=self._admitted,
                refused=self._refused,
                connections=len(self._by_id),
                clients=len(self._active),
            )

    def __repr__(self) -> str:
        prefix = f", ipv6_prefix={self.ipv6_prefix}" if self.ipv6_prefix != 128 else ""
        stats = self.statistics()
        return (
            f"per_ip_cap({self.limit}{prefix}) "
            f"[connections: {stats.connections} from {stats.clients} clients | refused: {stats.refused}]"
        )


def per_ip_cap(limit: int, *, ipv6_prefix: int = 128) -> ConnectionCapVerifier:
    """A verifier that admits at most *limit* concurrent requests per client IP.

    ``all_of(deny_networks("10.0.0.0/8"), per_ip_cap(4))`` reads as a policy.
    See :class:`ConnectionCapVerifier` (and its note on the forking dispatcher).
    """
    return ConnectionCapVerifier(limit, ipv6_prefix=ipv6_prefix)


@final
@attrs.frozen
class RateLimitStatistics:
    """A snapshot of a :class:`RateLimitVerifier`.

    Attributes:
        admitted: requests admitted so far.
        refused: requests refused for want of a token so far.
        clients: buckets held now (clients seen recently whose bucket has
            not refilled yet).
    """

    admitted: int
    refused: int
    clients: int


# Bounds the state of a rate limiter whatever the number of client addresses
# (an IPv6 attacker has plenty): past it, the least recently seen buckets are
# dropped first.
DEFAULT_MAX_CLIENTS: Final = 65536


@final
@attrs.define(eq=False, repr=False)
class RateLimitVerifier:
    """A verifier that limits how fast each client IP may open connections (token bucket).

    Build it with :func:`rate_limit`.  Each client has a bucket of *burst*
    tokens that refills at *rate* tokens per second; each request takes one,
    and a request that finds the bucket empty is refused.  Clients without an
    IP address (Unix sockets) are not limited.

    State stays bounded: a bucket that has refilled is the same as no bucket
    and is dropped, oldest first, as requests come; and at most *max_clients*
    buckets are kept (the least recently seen go first, which gives that
    client a full bucket again).

    Refusals are counted (:meth:`statistics`) and logged at WARNING on the
    ``composable_server.verifiers`` logger, at most once per *log_interval*.

    Args:
        rate: tokens per second (sustained connections per second per client).
        burst: bucket size (connections a client may open at once).
        ipv6_prefix: one bucket per IPv6 network of this prefix length (64:
            per /64); 128 gives each address its own.
        max_clients: the most buckets kept.
        log_interval: seconds between two refusal records.
        clock: a monotonic clock in seconds (injectable for tests).
    """

    rate: float = attrs.field(validator=attrs.validators.gt(0))
    burst: int = attrs.field(validator=attrs.validators.ge(1))
    ipv6_prefix: int = attrs.field(default=128, kw_only=True, validator=_check_prefix)
    max_clients: int = attrs.field(default=DEFAULT_MAX_CLIENTS, kw_only=True, validator=attrs.validators.ge(1))
    log_interval: float = attrs.field(default=REFUSAL_LOG_INTERVAL, kw_only=True)
    clock: Callable[[], float] = attrs.field(default=time.monotonic, kw_only=True)
    logger: logging.Logger = attrs.field(default=_logger, kw_only=True)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    # key -> (tokens, time of the last update); insertion order is recency.
    _buckets: dict[_ClientKey, tuple[float, float]] = attrs.field(init=False, factory=dict)
    _admitted: int = attrs.field(init=False, default=0)
    _refused: int = attrs.field(init=False, default=0)
    _log: LogLimiter = attrs.field(
        init=False, default=attrs.Factory(lambda self: LogLimiter(self.log_interval), takes_self=True)
    )

    def verify(self, request: object, client_address: object) -> bool:
        """Admit the request if its client's bucket has a token, and take it."""
        key = _client_key(client_address, self.ipv6_prefix)
        if key is None:
            return True
        with self._lock:
            now = self.clock()
            buckets = self._buckets
            previous = buckets.pop(key, None)  # re-inserted below: most recent last
            if previous is None:
                tokens = float(self.burst)
            else:
                tokens = min(float(self.burst), previous[0] + (now - previous[1]) * self.rate)
            admitted = tokens >= 1.0
            if admitted:
                tokens -= 1.0
                self._admitted += 1
            else:
                self._refused += 1
            buckets[key] = (tokens, now)
            self._expire(now)
            skipped = None if admitted else self._log.due(now)
        if skipped is not None:
            self.logger.warning(
                "refused %s: more than %d connections in a burst, %g per second sustained%s",
                _describe(key, self.ipv6_prefix),
                self.burst,
                self.rate,
                _more(skipped),
            )
        return admitted

    def _expire(self, now: float) -> None:
        """Drop the least recently seen buckets that have refilled (or are over the bound)."""
        buckets = self._buckets
        while buckets:
            key = next(iter(buckets))
            tokens, stamp = buckets[key]
            if len(buckets) > self.max_clients or tokens + (now - stamp) * self.rate >= self.burst:
                del buckets[key]
            else:
                return

    def tokens(self, client_address: object) -> float:
        """The tokens *client_address*'s client has now (*burst* if unknown)."""
        key = _client_key(client_address, self.ipv6_prefix)
        with self._lock:
            entry = None if key is None else self._buckets.get(key)
            if entry is None:
                return float(self.burst)
            return min(float(self.burst), entry[0] + (self.clock() - entry[1]) * self.rate)

    def statistics(self) -> RateLimitStatistics:
        """A snapshot of the counts."""
        with self._lock:
            return RateLimitStatistics(admitted=self._admitted, refused=self._refused, clients=len(self._buckets))

    def __repr__(self) -> str:
        prefix = f", ipv6_prefix={self.ipv6_prefix}" if self.ipv6_prefix != 128 else ""
        stats = self.statistics()
        return (
            f"rate_limit({self.rate:g}, burst={self.burst}{prefix}) "
            f"[clients: {stats.clients} | refused: {stats.refused}]"
        )


def rate_limit(rate: float, burst: int, *, ipv6_prefix: int = 128) -> RateLimitVerifier:
    """A verifier that lets each client IP open *burst* connections at once
    and *rate* per second after that (a token bucket).

    ``all_of(deny_networks(...), per_ip_cap(4), rate_limit(5, burst=20))``
    reads as a policy.  See :class:`RateLimitVerifier`.
    """
    return RateLimitVerifier(rate, burst, ipv6_prefix=ipv6_prefix)


# -- Peer credentials (Unix sockets) ----------------------------------------------------

# struct ucred {pid_t pid; uid_t uid; gid_t gid;} (unix(7), SO_PEERCRED).
_UCRED: Final = struct.Struct("3i")


@final
@attrs.frozen
class PeerCredentials:
    """Who is at the other end of a Unix socket, as the kernel recorded it at ``connect()``.

    Attributes:
        pid: the peer's process id.
        uid: its effective user id.
        gid: its effective (primary) group id.
    """

    pid: int
    uid: int
    gid: int


def peer_credentials(sock: Socket) -> PeerCredentials:
    """The credentials of *sock*'s peer (``SO_PEERCRED``, Linux).

    Raises:
        OSError: not a connected Unix socket, or not supported here.
    """
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return PeerCredentials(pid, uid, gid)


def _read_peer_credentials(request: object) -> PeerCredentials | None:
    if not isinstance(request, Socket) or request.family != socket.AF_UNIX:
        return None
    try:
        return peer_credentials(request)
    except OSError:
        return None


def _id_set(value: Iterable[int]) -> frozenset[int]:
    return frozenset(value)


@final
@attrs.frozen
class PeerCredentialsVerifier:
    """A verifier that admits only Unix-socket peers running as chosen users or groups.

    The kernel records the peer's credentials at ``connect()``
    (``SO_PEERCRED``); they cannot be forged by the client.  A peer is
    admitted if its uid is in *uids* or its gid in *gids*.  Only the primary
    group counts (supplementary groups are not in ``SO_PEERCRED``).  A
    request that is not a Unix stream socket is refused.  Refusals are logged
    at INFO on the ``composable_server.verifiers`` logger.

    Args:
        uids: user ids to admit (e.g. ``{os.getuid()}``).
        gids: group ids to admit.
        credentials: reads a request's credentials, None if it has none
            (default: :func:`peer_credentials`; injectable for tests).

    Raises:
        ValueError: both *uids* and *gids* are empty (that would admit no one).
    """

    uids: frozenset[int] = attrs.field(default=frozenset(), converter=_id_set)
    gids: frozenset[int] = attrs.field(default=frozenset(), converter=_id_set)
    credentials: Callable[[object], PeerCredentials | None] = attrs.field(
        default=_read_peer_credentials, kw_only=True, repr=False
    )

    def __attrs_post_init__(self) -> None:
        if not self.uids and not self.gids:
            raise ValueError("PeerCredentialsVerifier needs at least one uid or gid to admit")

    def verify(self, request: object, client_address: object) -> bool:
        """Return True if the peer's uid or gid is one of those admitted."""
        creds = self.credentials(request)
        if creds is None:
            _logger.info("refused %r: no peer credentials (not a Unix stream socket)", client_address)
            return False
        if creds.uid in self.uids or creds.gid in self.gids:
            return True
        _logger.info("refused peer pid=%d uid=%d gid=%d: uid and gid not admitted", creds.pid, creds.uid, creds.gid)
        return False
