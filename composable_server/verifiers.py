"""Verifiers: may this request be served?

* :class:`AllowAll` admits everything (the stdlib behaviour);
* :class:`CIDRVerifier`, made by :func:`allow_networks` /
  :func:`deny_networks`, admits or refuses clients by IP network (IPv4 and
  IPv6; an IPv4-mapped client is judged as IPv4);
* :func:`all_of` / :func:`any_of` combine verifiers into a policy that reads
  as one: ``all_of(deny_list, per_ip_cap)``.  Nested combinators of the same
  kind are flattened, so the repr stays readable.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Final, Literal, TypeVar, final

import attrs

from .exceptions import AddressError
from .interfaces import Verifier

__all__ = ("AllowAll", "CIDRVerifier", "all_of", "allow_networks", "any_of", "client_ip", "deny_networks")

_logger = logging.getLogger("composable_server.verifiers")

RequestT = TypeVar("RequestT")
AddressT = TypeVar("AddressT")


@final
@attrs.frozen
class AllowAll:
    """A verifier that admits every request."""

    def verify(self, request: object, client_address: object) -> bool:
        """Return True."""
        return True


@final
@attrs.frozen(repr=False)
class _AllOf:
    verifiers: tuple[Verifier[object, object], ...]

    def verify(self, request: object, client_address: object) -> bool:
        # Short-circuits: later verifiers (rate limits, caps) see only
        # requests the earlier ones admitted.
        return all(v.verify(request, client_address) for v in self.verifiers)

    def __repr__(self) -> str:
        return f"all_of({', '.join(map(repr, self.verifiers))})"


@final
@attrs.frozen(repr=False)
class _AnyOf:
    verifiers: tuple[Verifier[object, object], ...]

    def verify(self, request: object, client_address: object) -> bool:
        return any(v.verify(request, client_address) for v in self.verifiers)

    def __repr__(self) -> str:
        return f"any_of({', '.join(map(repr, self.verifiers))})"


def _flatten(kind: type[_AllOf] | type[_AnyOf], verifiers: tuple[object, ...]) -> tuple[Verifier[object, object], ...]:
    flat: list[Verifier[object, object]] = []
    for v in verifiers:
        if isinstance(v, kind):
            flat.extend(v.verifiers)
        else:
            flat.append(v)  # type: ignore[arg-type]  # typed at the public signature
    return tuple(flat)


def all_of(*verifiers: Verifier[RequestT, AddressT]) -> Verifier[RequestT, AddressT]:
    """A verifier that admits a request only if every one of *verifiers* does.

    Verifiers are asked in order and the first refusal stops the check.
    ``all_of()`` with no verifiers admits everything.
    """
    return _AllOf(_flatten(_AllOf, verifiers))


def any_of(*verifiers: Verifier[RequestT, AddressT]) -> Verifier[RequestT, AddressT]:
    """A verifier that admits a request if at least one of *verifiers* does.

    ``any_of()`` with no verifiers refuses everything.
    """
    return _AnyOf(_flatten(_AnyOf, verifiers))


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
