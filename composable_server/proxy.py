"""The PROXY protocol (HAProxy's ``doc/proxy-protocol.txt``, versions 1 and 2).

A load balancer in front of the server (HAProxy ``send-proxy``/
``send-proxy-v2``, nginx ``proxy_protocol on``, cloud load balancers) opens
every connection itself, so the peer of every accepted socket is the proxy.
It prepends a header that names the real client; this module reads it.

* :class:`ProxyParser` - sans-I/O (h11 style: no sockets): fed bytes in any
  pieces, it answers :class:`NeedData` (and how many bytes may be read next
  without reading past the header), :class:`Parsed` (the header and the bytes
  after it), or raises :class:`~composable_server.exceptions.ProxyProtocolError`.
* :class:`ProxyHeader` and the typed TLVs (:class:`ALPN`, :class:`Authority`,
  :class:`CRC32C`, :class:`Noop`, :class:`UniqueID`, :class:`SSLInfo`,
  :class:`NetNS`, :class:`RawTLV`): frozen attrs results.
* :class:`ProxyProtocolTransport` - wraps any stream transport (as
  ``TLSTransport`` does): in the worker, under a deadline, only for trusted
  peers, it reads exactly the header bytes and hands the handler a
  :class:`ProxiedSocket` that carries the header and the real client.
* :class:`ProxyProtocolDatagramAcceptor` - a v2 header on every datagram.

Theory of operation
-------------------

The spec's rules and how each is kept:

* "The receiver MUST be configured to only receive the protocol ... and MUST
  not try to guess whether the protocol header is present": the mode
  (``"v1"``, ``"v2"`` or ``"any"``) is mandatory and a connection without a
  valid header is refused; ``"any"`` accepts either version, never none.
* "only trusted proxies are allowed to use this protocol": a peer outside
  the trust list (loopback by default) is refused before a byte is read.
* Bounded reads: a v1 line is at most 107 bytes with its CRLF; a v2 header is
  16 bytes and then exactly the declared length, capped by *max_v2_length*.
  The transport peeks (``MSG_PEEK``) at most the bytes the header may still
  have, feeds them to the parser, and then ``recv``\\ s exactly the bytes the
  parser used: what follows the header (the client's first request, or its
  TLS ClientHello) stays in the socket for the handler or the handshake.
* Pieces: TCP may split the header anywhere (the spec only recommends
  tolerance); the parser keeps state across pieces, and the whole header must
  arrive within one deadline (default 3 s, the spec's "at least 3 seconds to
  cover a TCP retransmit"), so a slow drip is cut.
* ``LOCAL`` (health checks): the real endpoints are used, but the declared
  length is still skipped and its TLVs parsed (HAProxy 2.6 sends ``LOCAL``
  with a CRC32C TLV: a receiver that assumes length 0 reads TLV bytes as the
  request).
* CRC32C (RFC 4960 appendix B, Castagnoli): verified whenever present.  The
  stdlib has no CRC32C; a 256-entry table in Python is used, since a header
  is at most *max_v2_length* + 16 bytes and checked once per connection
  (``google-crc32c`` and ``crc32c`` on PyPI are compiled extensions: a
  binary dependency for microseconds per connection is not worth it).

The real client must reach the verifiers, the handler and the logs as
``client_address``.  ``start_request(request, client_address)`` returns it
with the request, and the server uses it from then on (handler,
``handle_error``, budget and drain reports).  Since the client is only known
once the header is read, the transport is a :attr:`late_admission
<ProxyProtocolTransport.late_admission>` one: the server runs its verifier
(CIDR lists, per-IP caps, rate limits) in the worker, right after
``start_request``; the trust list is checked before that, before a byte is
read.  The request carries the header too: :class:`ProxiedSocket` (a
:class:`socket.socket`) has ``.proxy_header`` and ``.client_address``, and
:func:`proxied_client_address` reads them from any request (TLS above the
PROXY layer included).
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import os
import re
import select
import socket
import struct
import threading
import time
from collections.abc import Iterable
from socket import socket as Socket
from typing import ClassVar, Final, Literal, TypeAlias, TypeVar, cast, final

import attrs

from ._wrapper import _Wrapper
from .acceptors import OVERSIZE_LOG_INTERVAL, DatagramAcceptor
from .exceptions import ProxyProtocolError, ServerStateError
from .interfaces import Acceptor, Address, DatagramRequest, Transport
from .verifiers import CIDRVerifier, allow_networks

__all__ = (
    "ALPN",
    "CRC32C",
    "DEFAULT_MAX_V2_LENGTH",
    "DEFAULT_PROXY_TIMEOUT",
    "DEFAULT_TRUSTED",
    "MAX_UNIQUE_ID_LENGTH",
    "TLV",
    "V1_MAX_LENGTH",
    "V2_SIGNATURE",
    "Authority",
    "Command",
    "NeedData",
    "NetNS",
    "Noop",
    "Parsed",
    "ProxiedDatagram",
    "ProxiedSocket",
    "ProxyHeader",
    "ProxyMode",
    "ProxyParser",
    "ProxyProtocolDatagramAcceptor",
    "ProxyProtocolStatistics",
    "ProxyProtocolTransport",
    "RawTLV",
    "SSLInfo",
    "UniqueID",
    "crc32c",
    "proxied_client_address",
    "proxy_header_of",
    "reply_address",
)

_logger = logging.getLogger("composable_server")

ProxyMode: TypeAlias = Literal["v1", "v2", "any"]
"""Which header a listener requires: version 1, version 2, or either (never none)."""

V1_MAX_LENGTH: Final = 107
"""The longest v1 line, CRLF included (``PROXY UNKNOWN`` with two full IPv6
addresses and ports; spec section 2.1)."""

V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
"""The 12 bytes every v2 header starts with."""

DEFAULT_MAX_V2_LENGTH: Final = 2048
"""Cap on a v2 header's declared length (the bytes after the fixed 16).  The
format allows 65535; real senders stay far below (a Unix address block is
216 bytes, HAProxy's unique ID at most 128, an SNI at most 255)."""

DEFAULT_PROXY_TIMEOUT: Final = 3.0
"""Seconds the whole header may take to arrive (spec section 2: "at least 3
seconds to cover a TCP retransmit")."""

DEFAULT_TRUSTED: Final = ("127.0.0.0/8", "::1/128")
"""The default trust list: a proxy on this host."""

MAX_UNIQUE_ID_LENGTH: Final = 128
"""The longest ``PP2_TYPE_UNIQUE_ID`` value (spec 2.2.5)."""

_V1_PREFIX: Final = b"PROXY "
# The shortest v1 line, "PROXY UNKNOWN\r\n": no header ends before it.
_V1_MIN_LENGTH: Final = 15
_V2_FIXED: Final = 16
_CR: Final = 0x0D
_LF: Final = 0x0A


# -- CRC32C --------------------------------------------------------------------------


def _crc32c_table() -> tuple[int, ...]:
    # Reflected Castagnoli polynomial 0x1EDC6F41 (RFC 4960 appendix B).
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE: Final = _crc32c_table()


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """The CRC32C (Castagnoli) checksum of *data*, as RFC 4960 appendix B and
    the PROXY protocol's ``PP2_TYPE_CRC32C`` define it.

    ``crc32c(b"123456789") == 0xE3069283`` (the standard check value).
    """
    table = _CRC32C_TABLE
    crc = 0xFFFFFFFF
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# -- results -------------------------------------------------------------------------


class Command(enum.IntEnum):
    """The v2 command (low nibble of byte 13).  A v1 header is always ``PROXY``."""

    LOCAL = 0x0
    """The proxy opened the connection itself (a health check): use the real endpoints."""
    PROXY = 0x1
    """The connection is relayed for the client the header names."""


@final
@attrs.frozen
class ALPN:
    """``PP2_TYPE_ALPN``: the application protocol negotiated with the client (e.g. ``b"h2"``)."""

    type: ClassVar[int] = 0x01
    protocol: bytes


@final
@attrs.frozen
class Authority:
    """``PP2_TYPE_AUTHORITY``: the host name the client asked for (the TLS SNI), UTF-8."""

    type: ClassVar[int] = 0x02
    host: str


@final
@attrs.frozen
class CRC32C:
    """``PP2_TYPE_CRC32C``: the header's checksum (already verified when this is returned)."""

    type: ClassVar[int] = 0x03
    checksum: int


@final
@attrs.frozen
class Noop:
    """``PP2_TYPE_NOOP``: padding, to be ignored."""

    type: ClassVar[int] = 0x04
    padding: bytes


@final
@attrs.frozen
class UniqueID:
    """``PP2_TYPE_UNIQUE_ID``: the proxy's opaque ID of the connection (at most 128 bytes),
    e.g. HAProxy's ``unique-id-format``, for correlating logs across layers."""

    type: ClassVar[int] = 0x05
    value: bytes


@final
@attrs.frozen
class RawTLV:
    """A TLV this module has no type for: its type byte and value, as sent."""

    type: int
    value: bytes


@final
@attrs.frozen
class SSLInfo:
    """``PP2_TYPE_SSL``: how the client reached the proxy over TLS (spec 2.2.6).

    Attributes:
        client: the ``PP2_CLIENT_*`` bit field.
        verify: 0 if the client presented a certificate that was verified.
        version: ``PP2_SUBTYPE_SSL_VERSION`` (e.g. ``"TLSv1.3"``).
        cn: ``PP2_SUBTYPE_SSL_CN``, the client certificate's Common Name.
        cipher: ``PP2_SUBTYPE_SSL_CIPHER`` (e.g. ``"TLS_AES_256_GCM_SHA384"``).
        sig_alg: ``PP2_SUBTYPE_SSL_SIG_ALG`` (e.g. ``"SHA256"``).
        key_alg: ``PP2_SUBTYPE_SSL_KEY_ALG`` (e.g. ``"RSA2048"``).
        others: sub-TLVs of other types, raw.
    """

    type: ClassVar[int] = 0x20
    CLIENT_SSL: ClassVar[int] = 0x01
    CLIENT_CERT_CONN: ClassVar[int] = 0x02
    CLIENT_CERT_SESS: ClassVar[int] = 0x04

    client: int
    verify: int
    version: str | None = None
    cn: str | None = None
    cipher: str | None = None
    sig_alg: str | None = None
    key_alg: str | None = None
    others: tuple[RawTLV, ...] = ()

    @property
    def ssl(self) -> bool:
        """True if the client connected over SSL/TLS (``PP2_CLIENT_SSL``)."""
        return bool(self.client & self.CLIENT_SSL)

    @property
    def cert_in_connection(self) -> bool:
        """True if the client presented a certificate on this connection."""
        return bool(self.client & self.CLIENT_CERT_CONN)

    @property
    def cert_in_session(self) -> bool:
        """True if the client presented a certificate at least once in this TLS session."""
        return bool(self.client & self.CLIENT_CERT_SESS)

    @property
    def verified(self) -> bool:
        """True if a client certificate was presented and verified (``verify == 0``)."""
        return self.verify == 0 and bool(self.client & (self.CLIENT_CERT_CONN | self.CLIENT_CERT_SESS))


@final
@attrs.frozen
class NetNS:
    """``PP2_TYPE_NETNS``: the name of the network namespace the client came from."""

    type: ClassVar[int] = 0x30
    name: str


TLV: TypeAlias = "ALPN | Authority | CRC32C | Noop | UniqueID | SSLInfo | NetNS | RawTLV"
"""Any TLV of a v2 header."""

TLVT = TypeVar("TLVT", ALPN, Authority, CRC32C, Noop, UniqueID, SSLInfo, NetNS, RawTLV)


@final
@attrs.frozen
class ProxyHeader:
    """A parsed PROXY protocol header.

    Attributes:
        version: 1 or 2.
        command: ``PROXY`` (relayed: the addresses are the client's), or
            ``LOCAL`` (v2 only: the proxy's own connection, e.g. a health check).
        family: ``AF_INET``, ``AF_INET6``, ``AF_UNIX``, or ``AF_UNSPEC``
            (v1 ``UNKNOWN``, v2 ``UNSPEC``, and every ``LOCAL`` header).
        protocol: ``SOCK_STREAM`` or ``SOCK_DGRAM``; None when unspecified
            (and for ``LOCAL``).
        source: the client, shaped like ``getpeername()``: ``(host, port)``
            for IPv4, ``(host, port, 0, 0)`` for IPv6, a path for Unix (None
            when the header carries no address).
        destination: the address the client connected to, same shape.
        tlvs: the v2 TLVs in wire order (empty for v1).
        length: the header's size on the wire, in bytes.
    """

    version: Literal[1, 2]
    command: Command
    family: socket.AddressFamily
    protocol: socket.SocketKind | None
    source: Address | None
    destination: Address | None
    tlvs: tuple[TLV, ...] = ()
    length: int = 0

    def client_address(self, peer: Address) -> Address:
        """The client to serve: :attr:`source`, or *peer* (the real endpoint)
        for ``LOCAL``, ``UNKNOWN`` and ``UNSPEC`` headers."""
        if self.command is Command.LOCAL or self.source is None:
            return peer
        return self.source

    def find(self, kind: type[TLVT]) -> TLVT | None:
        """The first TLV of class *kind*, or None."""
        for tlv in self.tlvs:
            if isinstance(tlv, kind):
                return tlv
        return None

    @property
    def unique_id(self) -> bytes | None:
        """The ``PP2_TYPE_UNIQUE_ID`` value, if sent."""
        tlv = self.find(UniqueID)
        return None if tlv is None else tlv.value

    @property
    def alpn(self) -> bytes | None:
        """The ``PP2_TYPE_ALPN`` value, if sent."""
        tlv = self.find(ALPN)
        return None if tlv is None else tlv.protocol

    @property
    def authority(self) -> str | None:
        """The ``PP2_TYPE_AUTHORITY`` value (SNI), if sent."""
        tlv = self.find(Authority)
        return None if tlv is None else tlv.host

    @property
    def ssl(self) -> SSLInfo | None:
        """The ``PP2_TYPE_SSL`` TLV, if sent."""
        return self.find(SSLInfo)


@final
@attrs.frozen
class NeedData:
    """The parser needs more bytes.

    Attributes:
        read: bytes that may be consumed now without passing the end of the
            header (at least 1): the bound for a reader that cannot peek.
        peek: how many bytes to peek at (``MSG_PEEK``) now: the rest of the
            header as far as it is known (v1: up to the 107-byte bound; v2:
            the 16 fixed bytes, then exactly the declared length).  Feed what
            was peeked; the parser returns what lies beyond the header as
            :attr:`Parsed.leftover`, which the reader must not consume.
    """

    read: int
    peek: int


@final
@attrs.frozen
class Parsed:
    """The header is complete.

    Attributes:
        header: the header.
        leftover: the bytes fed after the header's end (not part of it: they
            belong to the handler, or to the TLS handshake).
    """

    header: ProxyHeader
    leftover: bytes


# -- the parser ----------------------------------------------------------------------

_MODES: Final = ("v1", "v2", "any")

# An octet without leading zeros ("Heading zeroes are not permitted", spec 2.1).
_OCTET: Final = rb"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4_V1: Final = re.compile(_OCTET + rb"(?:\." + _OCTET + rb"){3}")
_IPV6_V1: Final = re.compile(rb"[0-9A-Fa-f:.]{2,45}")
_PORT_V1: Final = re.compile(rb"0|[1-9][0-9]{0,4}")

# Family/protocol bytes of spec 2.2 ("In practice, the following protocol
# bytes are expected"); anything else must be rejected.
_FAMILY_BYTES: Final[dict[int, tuple[socket.AddressFamily, socket.SocketKind | None]]] = {
    0x00: (socket.AF_UNSPEC, None),
    0x11: (socket.AF_INET, socket.SOCK_STREAM),
    0x12: (socket.AF_INET, socket.SOCK_DGRAM),
    0x21: (socket.AF_INET6, socket.SOCK_STREAM),
    0x22: (socket.AF_INET6, socket.SOCK_DGRAM),
    0x31: (socket.AF_UNIX, socket.SOCK_STREAM),
    0x32: (socket.AF_UNIX, socket.SOCK_DGRAM),
}
_ADDRESS_BLOCK: Final[dict[socket.AddressFamily, int]] = {
    socket.AF_UNSPEC: 0,
    socket.AF_INET: 12,
    socket.AF_INET6: 36,
    socket.AF_UNIX: 216,
}
_FAMILY_NAMES: Final = {
    socket.AF_UNSPEC: "UNSPEC",
    socket.AF_INET: "IPv4",
    socket.AF_INET6: "IPv6",
    socket.AF_UNIX: "Unix",
}


def _check_max_v2_length(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"max_v2_length must be in 0..65535 (the length field is 16 bits), got {value!r}")


def _show(data: bytes | bytearray, limit: int = 24) -> str:
    data = bytes(data)
    return repr(data[:limit]) + ("..." if len(data) > limit else "")


@final
@attrs.define(eq=False)
class ProxyParser:
    """An incremental parser of one PROXY protocol header; no I/O.

    Feed it bytes as they arrive; each :meth:`feed` returns :class:`NeedData`
    or :class:`Parsed`, or raises :class:`ProxyProtocolError` as soon as the
    bytes cannot start a valid header (a wrong first byte is refused at once).
    Strict, as the spec asks ("Any sequence which does not exactly match the
    protocol must be discarded"): single spaces, canonical addresses, no
    leading zeros, CRLF (never a lone CR or LF), known version, command and
    family bytes, address blocks and TLVs that fit the declared length.

    Args:
        mode: ``"v1"``, ``"v2"`` or ``"any"`` (either, told apart by the
            first byte: ``P`` or ``\\r``).
        max_v2_length: the largest declared v2 length accepted.

    Example::

        parser = ProxyParser("v2")
        step = parser.next_step()          # NeedData(read=16, peek=16)
        step = parser.feed(first_bytes)    # ... until Parsed(header, leftover)
    """

    mode: ProxyMode = attrs.field(validator=attrs.validators.in_(_MODES))
    max_v2_length: int = attrs.field(default=DEFAULT_MAX_V2_LENGTH, kw_only=True, validator=_check_max_v2_length)
    _buffer: bytearray = attrs.field(init=False, factory=bytearray, repr=False)
    _version: int | None = attrs.field(init=False, default=None)
    _done: bool = attrs.field(init=False, default=False)

    @property
    def buffered(self) -> int:
        """How many header bytes have been fed so far."""
        return len(self._buffer)

    def next_step(self) -> NeedData:
        """What the parser needs now (before or between :meth:`feed` calls).

        Raises:
            ServerStateError: the header is already complete.
        """
        if self._done:
            raise ServerStateError("the PROXY header is already parsed; the parser takes no more bytes")
        have = len(self._buffer)
        if self._version == 2 or (self._version is None and self.mode == "v2"):
            if have < _V2_FIXED:
                return NeedData(_V2_FIXED - have, _V2_FIXED - have)
            missing = _V2_FIXED + int.from_bytes(self._buffer[14:16], "big") - have
            return NeedData(missing, missing)
        peek = V1_MAX_LENGTH - have
        if self._version is None and self.mode == "any":
            # Either version: v1 may have up to 107 bytes, v2 at least 16.
            return NeedData(_V1_MIN_LENGTH, V1_MAX_LENGTH)
        if have < _V1_MIN_LENGTH:
            read = _V1_MIN_LENGTH - have
        else:
            # The line can end at the earliest after "\r\n" (2 bytes), or
            # after "\n" (1) if the last byte was the CR.
            read = 1 if self._buffer[-1] == _CR else 2
        return NeedData(max(1, min(read, peek)), peek)

    def feed(self, data: bytes | bytearray | memoryview) -> NeedData | Parsed:
        """Add *data* and say what is missing, or return the header.

        Returns:
            :class:`NeedData`, or :class:`Parsed` with the bytes after the
            header (empty if *data* ended with it).

        Raises:
            ProxyProtocolError: the bytes are not a valid header of the
                configured mode; the message names the problem.
            ServerStateError: the header is already complete.
        """
        if self._done:
            raise ServerStateError("the PROXY header is already parsed; the parser takes no more bytes")
        buf = self._buffer
        start = len(buf)
        buf += data
        if not buf:
            return self.next_step()
        if self._version is None:
            first = buf[0]
            if first == _V1_PREFIX[0] and self.mode in ("v1", "any"):
                self._version = 1
            elif first == V2_SIGNATURE[0] and self.mode in ("v2", "any"):
                self._version = 2
            else:
                expected = {"v1": "a v1 header ('PROXY ...')", "v2": "a v2 header (its 12-byte signature)"}.get(
                    self.mode, "a v1 or v2 header"
                )
                raise ProxyProtocolError(f"expected {expected}, got {_show(buf)}")
        try:
            result = self._feed_v1(start) if self._version == 1 else self._feed_v2()
        except ProxyProtocolError:
            self._done = True
            raise
        if isinstance(result, Parsed):
            self._done = True
            buf.clear()
        return result

    # -- v1 ------------------------------------------------------------------------

    def _feed_v1(self, start: int) -> NeedData | Parsed:
        buf = self._buffer
        prefix = bytes(buf[: len(_V1_PREFIX)])
        if not _V1_PREFIX.startswith(prefix):
            raise ProxyProtocolError(f"v1: expected the line to start with 'PROXY ', got {_show(buf)}")
        window = min(len(buf), V1_MAX_LENGTH)
        lf = buf.find(b"\n", max(0, start - 1), window)
        cr = buf.find(b"\r", 0, window if lf < 0 else lf)
        if lf < 0:
            # A CR must be the last byte seen so far (its LF may follow).
            if 0 <= cr < window - 1:
                raise ProxyProtocolError(f"v1: CR not followed by LF in {_show(buf[: cr + 2], 120)}")
            if len(buf) >= V1_MAX_LENGTH:
                raise ProxyProtocolError(f"v1: no CRLF within the first {V1_MAX_LENGTH} bytes")
            return self.next_step()
        if 0 <= cr < lf - 1:
            raise ProxyProtocolError(f"v1: CR not followed by LF in {_show(buf[: lf + 1], 120)}")
        if cr < 0:
            raise ProxyProtocolError(f"v1: lone LF, the line must end with CRLF: {_show(buf[: lf + 1], 120)}")
        header = _parse_v1_line(bytes(buf[: lf - 1]), lf + 1)
        return Parsed(header, bytes(buf[lf + 1 :]))

    # -- v2 ------------------------------------------------------------------------

    def _feed_v2(self) -> NeedData | Parsed:
        buf = self._buffer
        have = len(buf)
        sig = bytes(buf[: len(V2_SIGNATURE)])
        if not V2_SIGNATURE.startswith(sig):
            raise ProxyProtocolError(f"v2: bad signature {_show(sig)}, expected {V2_SIGNATURE!r}")
        if have > 12:
            version, command = buf[12] >> 4, buf[12] & 0x0F
            if version != 2:
                raise ProxyProtocolError(f"v2: version {version} in byte 13 (0x{buf[12]:02x}), expected 2")
            if command not in (Command.LOCAL, Command.PROXY):
                raise ProxyProtocolError(f"v2: unknown command 0x{command:x}, expected LOCAL (0) or PROXY (1)")
        if have > 13 and buf[13] not in _FAMILY_BYTES:
            raise ProxyProtocolError(
                f"v2: unknown family/protocol byte 0x{buf[13]:02x}, expected one of "
                + ", ".join(f"0x{b:02x}" for b in _FAMILY_BYTES)
            )
        if have < _V2_FIXED:
            return self.next_step()
        length = int.from_bytes(buf[14:16], "big")
        if length > self.max_v2_length:
            raise ProxyProtocolError(f"v2: declared length {length} exceeds the limit of {self.max_v2_length} bytes")
        family, protocol = _FAMILY_BYTES[buf[13]]
        block = _ADDRESS_BLOCK[family]
        if length < block:
            raise ProxyProtocolError(
                f"v2: declared length {length} is shorter than the {block}-byte {_FAMILY_NAMES[family]} address block"
            )
        total = _V2_FIXED + length
        if have < total:
            return self.next_step()
        header = _parse_v2(bytes(buf[:total]), family, protocol, block)
        return Parsed(header, bytes(buf[total:]))


def _v1_ip(text: bytes, family: socket.AddressFamily) -> str:
    if family == socket.AF_INET:
        if _IPV4_V1.fullmatch(text) is None:
            raise ProxyProtocolError(f"v1: {text!r} is not an IPv4 address in canonical form (no leading zeros)")
        return text.decode("ascii")
    if _IPV6_V1.fullmatch(text) is None:
        raise ProxyProtocolError(f"v1: {text!r} is not an IPv6 address")
    try:
        return _ipv6_text(ipaddress.IPv6Address(text.decode("ascii")).packed)
    except ValueError as exc:
        raise ProxyProtocolError(f"v1: {text!r} is not an IPv6 address: {exc}") from None


def _ipv6_text(packed: bytes) -> str:
    # inet_ntop, as getpeername() reports a peer (an IPv4-mapped one as
    # ::ffff:a.b.c.d), whatever the Python version's ipaddress.__str__ does.
    return socket.inet_ntop(socket.AF_INET6, packed)


def _v1_port(text: bytes) -> int:
    if _PORT_V1.fullmatch(text) is None or int(text) > 0xFFFF:
        raise ProxyProtocolError(f"v1: {text!r} is not a port in 0..65535 without leading zeros")
    return int(text)


def _parse_v1_line(line: bytes, length: int) -> ProxyHeader:
    """Parse one v1 line, without its CRLF (the prefix is already checked)."""
    fields = line.split(b" ")
    proto = fields[1]
    if proto == b"UNKNOWN":
        # "the receiver must ignore anything presented before the CRLF"
        return ProxyHeader(1, Command.PROXY, socket.AF_UNSPEC, None, None, None, (), length)
    if proto not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError(f"v1: unknown protocol {proto!r}, expected TCP4, TCP6 or UNKNOWN")
    if len(fields) != 6 or not all(fields):
        raise ProxyProtocolError(
            f"v1: expected 'PROXY {proto.decode()} <src> <dst> <sport> <dport>' with single spaces, got {line!r}"
        )
    family = socket.AF_INET if proto == b"TCP4" else socket.AF_INET6
    src, dst = _v1_ip(fields[2], family), _v1_ip(fields[3], family)
    sport, dport = _v1_port(fields[4]), _v1_port(fields[5])
    source: Address
    destination: Address
    if family == socket.AF_INET:
        source, destination = (src, sport), (dst, dport)
    else:
        source, destination = (src, sport, 0, 0), (dst, dport, 0, 0)
    return ProxyHeader(1, Command.PROXY, family, socket.SOCK_STREAM, source, destination, (), length)


def _unix_path(raw: bytes) -> str | bytes:
    if raw[:1] == b"\0" and raw.strip(b"\0"):  # a Linux abstract name; its length is not transported
        return b"\0" + raw[1:].rstrip(b"\0")
    return os.fsdecode(raw.split(b"\0", 1)[0])


def _addresses(block: bytes, family: socket.AddressFamily) -> tuple[Address, Address]:
    if family == socket.AF_INET:
        sport, dport = struct.unpack("!HH", block[8:12])
        return (socket.inet_ntop(family, block[0:4]), sport), (socket.inet_ntop(family, block[4:8]), dport)
    if family == socket.AF_INET6:
        sport, dport = struct.unpack("!HH", block[32:36])
        return (_ipv6_text(block[0:16]), sport, 0, 0), (_ipv6_text(block[16:32]), dport, 0, 0)
    return _unix_path(block[0:108]), _unix_path(block[108:216])


def _text(value: bytes, what: str, encoding: str) -> str:
    try:
        return value.decode(encoding)
    except UnicodeDecodeError as exc:
        raise ProxyProtocolError(f"v2: {what} TLV is not {encoding}: {exc}") from None


def _split_tlvs(data: bytes, base: int, what: str) -> list[tuple[int, int, bytes]]:
    """``(type, offset of the value, value)`` of every TLV in *data*, which must hold whole TLVs."""
    out = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 3:
            raise ProxyProtocolError(
                f"v2: {len(data) - offset} stray bytes at the end of the {what} (a TLV needs at least 3)"
            )
        kind = data[offset]
        size = int.from_bytes(data[offset + 1 : offset + 3], "big")
        end = offset + 3 + size
        if end > len(data):
            raise ProxyProtocolError(
                f"v2: {what} TLV 0x{kind:02x} declares {size} bytes but only {len(data) - offset - 3} remain"
            )
        out.append((kind, base + offset + 3, data[offset + 3 : end]))
        offset = end
    return out


_SSL_TEXT: Final = {0x21: "version", 0x22: "cn", 0x23: "cipher", 0x24: "sig_alg", 0x25: "key_alg"}


def _ssl(value: bytes) -> SSLInfo:
    if len(value) < 5:
        raise ProxyProtocolError(f"v2: SSL TLV of {len(value)} bytes, expected at least 5 (client, verify)")
    fields: dict[str, str] = {}
    others = []
    for kind, _, sub in _split_tlvs(value[5:], 0, "SSL"):
        name = _SSL_TEXT.get(kind)
        if name is None:
            others.append(RawTLV(kind, sub))
        else:
            fields[name] = _text(sub, f"SSL {name}", "utf-8" if name == "cn" else "ascii")
    return SSLInfo(
        client=value[0],
        verify=int.from_bytes(value[1:5], "big"),
        version=fields.get("version"),
        cn=fields.get("cn"),
        cipher=fields.get("cipher"),
        sig_alg=fields.get("sig_alg"),
        key_alg=fields.get("key_alg"),
        others=tuple(others),
    )


def _tlv(kind: int, value: bytes) -> TLV:
    if kind == ALPN.type:
        return ALPN(value)
    if kind == Authority.type:
        return Authority(_text(value, "AUTHORITY", "utf-8"))
    if kind == CRC32C.type:
        if len(value) != 4:
            raise ProxyProtocolError(f"v2: CRC32C TLV of {len(value)} bytes, expected 4")
        return CRC32C(int.from_bytes(value, "big"))
    if kind == Noop.type:
        return Noop(value)
    if kind == UniqueID.type:
        if len(value) > MAX_UNIQUE_ID_LENGTH:
            raise ProxyProtocolError(f"v2: UNIQUE_ID TLV of {len(value)} bytes, at most {MAX_UNIQUE_ID_LENGTH} allowed")
        return UniqueID(value)
    if kind == SSLInfo.type:
        return _ssl(value)
    if kind == NetNS.type:
        return NetNS(_text(value, "NETNS", "ascii"))
    return RawTLV(kind, value)


def _parse_v2(
    raw: bytes, family: socket.AddressFamily, protocol: socket.SocketKind | None, block: int
) -> ProxyHeader:
    """Parse a complete v2 header (fixed part, addresses, TLVs); verify its CRC32C."""
    command = Command(raw[12] & 0x0F)
    start = _V2_FIXED + block
    tlvs: list[TLV] = []
    checksum_at: int | None = None
    for kind, offset, value in _split_tlvs(raw[start:], start, "header"):
        tlv = _tlv(kind, value)
        if isinstance(tlv, CRC32C):
            if checksum_at is not None:
                raise ProxyProtocolError("v2: more than one CRC32C TLV")
            checksum_at = offset
        tlvs.append(tlv)
    if checksum_at is not None:
        sent = int.from_bytes(raw[checksum_at : checksum_at + 4], "big")
        computed = crc32c(raw[:checksum_at] + b"\0\0\0\0" + raw[checksum_at + 4 :])
        if computed != sent:
            raise ProxyProtocolError(f"v2: CRC32C mismatch: header says 0x{sent:08x}, computed 0x{computed:08x}")
    if command is Command.LOCAL:
        # "discard the protocol block including the family which is ignored"
        return ProxyHeader(2, command, socket.AF_UNSPEC, None, None, None, tuple(tlvs), len(raw))
    source: Address | None = None
    destination: Address | None = None
    if family != socket.AF_UNSPEC:
        source, destination = _addresses(raw[_V2_FIXED:start], family)
    return ProxyHeader(2, command, family, protocol, source, destination, tuple(tlvs), len(raw))


# -- requests that carry the header ---------------------------------------------------


@final
class ProxiedSocket(Socket):
    """An accepted connection whose PROXY header has been read.

    A :class:`socket.socket` (stdlib handlers use it as they are) with two
    more attributes:

    Attributes:
        proxy_header: the :class:`ProxyHeader`.
        client_address: the client to serve: the header's source, or the real
            peer for ``LOCAL``/``UNKNOWN``/``UNSPEC`` headers.
        proxy_address: the real peer (the proxy).
    """

    __slots__ = ("client_address", "proxy_address", "proxy_header")

    proxy_header: ProxyHeader
    client_address: Address
    proxy_address: Address

    @classmethod
    def adopt(cls, sock: Socket, header: ProxyHeader, peer: Address) -> ProxiedSocket:
        """Move *sock*'s descriptor (and timeout) into a new ProxiedSocket; *sock* is left detached."""
        timeout = sock.gettimeout()
        proxied = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        proxied.settimeout(timeout)
        proxied.proxy_header = header
        proxied.proxy_address = peer
        proxied.client_address = header.client_address(peer)
        return proxied


def proxy_header_of(request: object) -> ProxyHeader | None:
    """The PROXY header a request carries (a :class:`ProxiedSocket`, a TLS
    socket above a :class:`ProxyProtocolTransport`, a
    :class:`ProxiedDatagram`), or None."""
    header = getattr(request, "proxy_header", None)
    return header if isinstance(header, ProxyHeader) else None


AddressT = TypeVar("AddressT")


def proxied_client_address(request: object, client_address: AddressT) -> AddressT | Address:
    """The client to judge, serve and log for *request*: the one its PROXY
    header names, else *client_address* (what ``accept()`` reported).

    The server needs no such call (``start_request`` returns the client);
    this is for code that holds only the request.
    """
    address = getattr(request, "client_address", None)
    if address is None or proxy_header_of(request) is None:
        return client_address
    return cast(Address, address)


def reply_address(request: object, client_address: AddressT) -> AddressT | Address:
    """Where a datagram handler sends its reply: the proxy for a
    :class:`ProxiedDatagram` (the client sent its datagram to the proxy, and
    only the proxy can relay the answer), else *client_address*."""
    if isinstance(request, ProxiedDatagram):
        return request.proxy_address
    return client_address


# -- the stream transport -------------------------------------------------------------

StreamAddressT = TypeVar("StreamAddressT")


def _trust_list(value: Iterable[str | ipaddress.IPv4Network | ipaddress.IPv6Network] | CIDRVerifier) -> CIDRVerifier:
    if isinstance(value, CIDRVerifier):
        return value
    if isinstance(value, str):
        value = (value,)
    return allow_networks(*value)


def _default_trust() -> CIDRVerifier:
    return allow_networks(*DEFAULT_TRUSTED)


def _check_timeout(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:  # also rejects NaN
        raise ValueError(f"timeout must be a number of seconds > 0, got {value!r}")


def _trusted(trust: CIDRVerifier, peer: object, family: int) -> bool:
    # A Unix peer has no IP: whoever may connect to the socket file was
    # granted that by its permissions (UnixStreamTransport(mode=0o660)).
    return family == socket.AF_UNIX or trust.match(peer) is not None


@final
@attrs.frozen
class ProxyProtocolStatistics:
    """A snapshot of a PROXY layer's connections (this process only).

    Attributes:
        proxied: headers accepted with ``PROXY`` and an address.
        local: headers accepted that name no client (``LOCAL``, ``UNKNOWN``,
            ``UNSPEC``: health checks), served with the real endpoints.
        refused: connections refused (bad header, untrusted peer, timeout).
        untrusted: of those, peers outside the trust list.
        timed_out: of those, headers that missed the deadline.
    """

    proxied: int
    local: int
    refused: int
    untrusted: int
    timed_out: int


@attrs.define(eq=False, repr=False)
class _Counters:
    lock: threading.Lock = attrs.field(factory=threading.Lock)
    proxied: int = 0
    local: int = 0
    refused: int = 0
    untrusted: int = 0
    timed_out: int = 0

    def accepted(self, header: ProxyHeader) -> None:
        with self.lock:
            if header.command is Command.LOCAL or header.source is None:
                self.local += 1
            else:
                self.proxied += 1

    def failed(self, exc: ProxyProtocolError, *, untrusted: bool = False) -> ProxyProtocolError:
        with self.lock:
            self.refused += 1
            self.untrusted += untrusted
            self.timed_out += exc.timed_out
        return exc

    def snapshot(self) -> ProxyProtocolStatistics:
        with self.lock:
            return ProxyProtocolStatistics(self.proxied, self.local, self.refused, self.untrusted, self.timed_out)


_PEEK: Final = socket.MSG_PEEK | socket.MSG_DONTWAIT


@final
@attrs.define(eq=False, repr=False)
class ProxyProtocolTransport(_Wrapper[StreamAddressT]):
    """The PROXY protocol over any stream transport (TCP, Unix stream, TLS).

    Everything but the header is delegated to *inner*.  The header is read in
    :meth:`start_request`, which the server calls in the worker, never in the
    accept loop: a silent or dribbling peer holds one worker for at most
    *timeout* seconds.  TLS goes above: ``ProxyProtocolTransport(
    TLSTransport(TCPTransport(...), ctx), mode="v2")`` reads the header from
    the plain socket, then lets the TLS layer shake hands on what follows.

    Args:
        inner: the transport to wrap.
        mode: ``"v1"``, ``"v2"`` or ``"any"``: required, never guessed.
        trusted: CIDR networks of the proxies allowed to send a header
            (default: loopback); any other peer is refused before a byte is
            read.  Unix stream peers are always trusted (the socket file's
            mode decides who may connect).
        timeout: seconds the whole header may take (a deadline, not a
            per-read timeout).
        max_v2_length: the largest declared v2 length accepted.

    Raises:
        AddressError: a *trusted* entry is not a CIDR network.
        ValueError: a bad *mode*, *timeout* or *max_v2_length*.
    """

    inner: Transport[Socket, StreamAddressT]
    mode: ProxyMode = attrs.field(kw_only=True, validator=attrs.validators.in_(_MODES))
    trusted: CIDRVerifier = attrs.field(kw_only=True, factory=_default_trust, converter=_trust_list)
    timeout: float = attrs.field(kw_only=True, default=DEFAULT_PROXY_TIMEOUT, validator=_check_timeout)
    max_v2_length: int = attrs.field(kw_only=True, default=DEFAULT_MAX_V2_LENGTH, validator=_check_max_v2_length)
    _counters: _Counters = attrs.field(init=False, factory=_Counters)

    # -- the header -----------------------------------------------------------------

    late_admission: ClassVar[bool] = True
    """The client is known only once the header is read: the server verifies
    after :meth:`start_request`, in the worker."""

    def start_request(self, request: Socket, client_address: object) -> tuple[Socket, Address]:
        """Read the PROXY header from *request*, then start the inner layer.

        Returns:
            A :class:`ProxiedSocket` (or, with TLS inside, the TLS socket,
            given the same ``proxy_header``/``client_address`` attributes),
            positioned on the first byte after the header, and the client:
            the one the header names, or the real peer for ``LOCAL`` (the
            accepted *client_address* is not used: the peer is read from
            the socket).

        Raises:
            ProxyProtocolError: the peer is not trusted, the header is
                invalid, incomplete at EOF, or not complete within
                :attr:`timeout` (``timed_out``); *request* is left open for
                the server to release.
            OSError: from the inner transport's ``start_request`` (a failed
                TLS handshake).
        """
        try:
            peer = request.getpeername()
        except OSError as exc:
            raise self._counters.failed(ProxyProtocolError(f"the peer is gone: {exc}")) from exc
        if not _trusted(self.trusted, peer, request.family):
            raise self._counters.failed(
                ProxyProtocolError(f"untrusted source: not in the trust list {self.trusted!r}", peer=peer),
                untrusted=True,
            )
        try:
            header = self._read(request)
        except ProxyProtocolError as exc:
            exc.peer = peer
            self._counters.failed(exc)
            raise
        self._counters.accepted(header)
        proxied = ProxiedSocket.adopt(request, header, peer)
        try:
            started, _ = self.inner.start_request(proxied, peer)
        except BaseException:
            proxied.close()  # the descriptor is in proxied now (a no-op if TLS took it over)
            raise
        if started is not proxied:
            # TLS above us made a new socket object (an SSLSocket has a __dict__).
            started.proxy_header = header  # type: ignore[attr-defined]  # attached for proxy_header_of()
            started.client_address = proxied.client_address  # type: ignore[attr-defined]  # as above
            started.proxy_address = peer  # type: ignore[attr-defined]  # as above
        return started, proxied.client_address

    def _read(self, sock: Socket) -> ProxyHeader:
        """Peek, parse, and consume exactly the header's bytes, before the deadline."""
        parser = ProxyParser(self.mode, max_v2_length=self.max_v2_length)
        deadline = time.monotonic() + self.timeout
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        step = parser.next_step()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(remaining * 1000.0):
                raise ProxyProtocolError(
                    f"no complete header within {self.timeout} s ({parser.buffered} bytes received)",
                    timed_out=True,
                )
            try:
                data = sock.recv(step.peek, _PEEK)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                raise ProxyProtocolError(f"reading the header failed: {exc}") from exc
            if not data:
                raise ProxyProtocolError(f"connection closed after {parser.buffered} bytes of the header")
            result = parser.feed(data)
            used = len(data) - len(result.leftover) if isinstance(result, Parsed) else len(data)
            _discard(sock, used)
            if isinstance(result, Parsed):
                return result.header
            step = result

    def statistics(self) -> ProxyProtocolStatistics:
        """A snapshot of the header counts (this process)."""
        return self._counters.snapshot()

    def __repr__(self) -> str:
        s = self.statistics()
        return (
            f"<ProxyProtocolTransport {self.mode} over {self.inner!r} trusted={self.trusted!r} "
            f"timeout={self.timeout} [proxied: {s.proxied}, local: {s.local}, refused: {s.refused}]>"
        )


def _discard(sock: Socket, count: int) -> None:
    """Consume *count* bytes that a peek has shown to be in the socket's queue."""
    while count > 0:
        try:
            got = sock.recv(count, socket.MSG_DONTWAIT)
        except InterruptedError:
            continue
        except OSError as exc:
            raise ProxyProtocolError(f"consuming the header failed: {exc}") from exc
        if not got:
            raise ProxyProtocolError("connection closed while consuming the header")
        count -= len(got)


# -- datagrams -----------------------------------------------------------------------


@final
class ProxiedDatagram(tuple[bytes, Socket]):
    """A datagram request ``(payload, listening_socket)`` whose v2 header was
    stripped; it unpacks as a plain datagram request.

    Attributes:
        proxy_header: the header.
        client_address: the client the header names (or the proxy, for LOCAL).
        proxy_address: the real sender (the proxy): replies go there, since
            the client sent its datagram to the proxy, not to us.
    """

    proxy_header: ProxyHeader
    client_address: Address
    proxy_address: Address

    def __new__(cls, payload: bytes, sock: Socket, header: ProxyHeader, proxy_address: Address) -> ProxiedDatagram:
        self = super().__new__(cls, (payload, sock))
        self.proxy_header = header
        self.proxy_address = proxy_address
        self.client_address = header.client_address(proxy_address)
        return self


@final
@attrs.define(eq=False)
class ProxyProtocolDatagramAcceptor:
    """Receives one datagram that starts with a PROXY v2 header (v1 is TCP only).

    Every datagram carries its own header (nothing is remembered between
    them).  The header is parsed in the accept loop: a datagram is complete
    when it arrives, so this is bounded work, never a wait.

    The request is a :class:`ProxiedDatagram` (the payload after the header)
    and the client address is the proxied client; a reply must go to
    ``request.proxy_address``, the proxy.

    Args:
        inner: the acceptor that receives the datagram (default
            :class:`DatagramAcceptor`).
        trusted: CIDR networks allowed to send a header (default loopback);
            Unix datagram senders are always trusted.
        max_v2_length: the largest declared v2 length accepted.
        logger: where refused datagrams are logged.

    A refused datagram raises :class:`ProxyProtocolError`, an ``OSError``
    with ``EPROTO``, which the server's accept path skips as transient (no
    back-off); refusals are counted (:meth:`statistics`) and logged at
    WARNING, with the sender and the reason, at most once per
    :data:`~composable_server.acceptors.OVERSIZE_LOG_INTERVAL` seconds.
    """

    inner: Acceptor[DatagramRequest, object] = attrs.field(factory=DatagramAcceptor)
    trusted: CIDRVerifier = attrs.field(kw_only=True, factory=_default_trust, converter=_trust_list)
    max_v2_length: int = attrs.field(kw_only=True, default=DEFAULT_MAX_V2_LENGTH, validator=_check_max_v2_length)
    logger: logging.Logger = attrs.field(default=_logger, kw_only=True, repr=False)
    _counters: _Counters = attrs.field(init=False, factory=_Counters, repr=False)
    _last_log: float | None = attrs.field(init=False, default=None, repr=False)
    _unlogged: int = attrs.field(init=False, default=0, repr=False)

    def accept(self, transport: Transport[DatagramRequest, AddressT]) -> tuple[DatagramRequest, AddressT]:
        """Receive one datagram and strip its v2 header.

        Raises:
            ProxyProtocolError: an untrusted sender, or no valid v2 header
                (the datagram is dropped).
            OSError: from the inner acceptor.
        """
        (data, sock), peer = self.inner.accept(transport)
        if not _trusted(self.trusted, peer, sock.family):
            exc = ProxyProtocolError(f"untrusted source: not in the trust list {self.trusted!r}", peer=peer)
            self._refused(exc, untrusted=True)
            raise exc
        parser = ProxyParser("v2", max_v2_length=self.max_v2_length)
        try:
            result = parser.feed(data)
            if isinstance(result, NeedData):
                raise ProxyProtocolError(f"datagram of {len(data)} bytes ends inside its v2 header")
        except ProxyProtocolError as exc:
            exc.peer = peer
            self._refused(exc)
            raise
        header = result.header
        self._counters.accepted(header)
        request = ProxiedDatagram(result.leftover, sock, header, cast(Address, peer))
        return request, cast(AddressT, request.client_address)

    def _refused(self, exc: ProxyProtocolError, *, untrusted: bool = False) -> None:
        self._counters.failed(exc, untrusted=untrusted)
        now = time.monotonic()
        with self._counters.lock:
            if self._last_log is not None and now - self._last_log < OVERSIZE_LOG_INTERVAL:
                self._unlogged += 1
                return
            unlogged, self._unlogged, self._last_log = self._unlogged, 0, now
        more = f" ({unlogged} more since the last report)" if unlogged else ""
        self.logger.warning("dropped a datagram: %s%s", exc, more)

    def statistics(self) -> ProxyProtocolStatistics:
        """A snapshot of the header counts."""
        return self._counters.snapshot()
