"""Unit tests of the PROXY protocol parser and its results (no sockets)."""

from __future__ import annotations

import errno
import socket
import struct

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from composable_server.exceptions import ProxyProtocolError, ServerError, ServerStateError
from composable_server.proxy import (
    ALPN,
    CRC32C,
    V1_MAX_LENGTH,
    V2_SIGNATURE,
    Authority,
    Command,
    NeedData,
    NetNS,
    Noop,
    Parsed,
    ProxyHeader,
    ProxyMode,
    ProxyParser,
    ProxyProtocolTransport,
    RawTLV,
    SSLInfo,
    UniqueID,
    crc32c,
    proxied_client_address,
    proxy_header_of,
    reply_address,
)
from composable_server.testing import MemoryTransport

# Recorded from HAProxy 2.6.12 (``send-proxy-v2 proxy-v2-options
# unique-id,crc32c check check-send-proxy``): a health check (LOCAL, UNSPEC,
# length 7: one CRC32C TLV) and a relayed connection (PROXY, TCP over IPv4,
# CRC32C and an empty UNIQUE_ID TLV), followed by the client's b"hello".
HAPROXY_LOCAL_CHECK = bytes.fromhex("0d0a0d0a000d0a515549540a20000007030004a9b87e8f")
HAPROXY_RELAYED = bytes.fromhex(
    "0d0a0d0a000d0a515549540a211100167f0000017f0000018a22ed450300044caeac6a05000068656c6c6f"
)


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def v2(
    fam: int = 0x11,
    addresses: bytes = b"",
    tlvs: bytes = b"",
    *,
    command: int = 0x1,
    version: int = 0x2,
    checksum: bool = False,
    length: int | None = None,
) -> bytes:
    """A v2 header; with *checksum*, a CRC32C TLV is appended and filled in."""
    body = addresses + tlvs
    if checksum:
        body += tlv(0x03, b"\0\0\0\0")
    size = len(body) if length is None else length
    raw = V2_SIGNATURE + bytes([version << 4 | command, fam]) + struct.pack("!H", size) + body
    if checksum:
        raw = raw[:-4] + crc32c(raw).to_bytes(4, "big")
    return raw


def ipv4_block(src: str = "192.0.2.1", dst: str = "198.51.100.2", sport: int = 40000, dport: int = 443) -> bytes:
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)


def ipv6_block(src: str = "2001:db8::1", dst: str = "2001:db8::2", sport: int = 40000, dport: int = 443) -> bytes:
    return (
        socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst) + struct.pack("!HH", sport, dport)
    )


def unix_block(src: bytes, dst: bytes) -> bytes:
    return src.ljust(108, b"\0") + dst.ljust(108, b"\0")


def parse(data: bytes, mode: ProxyMode = "any") -> Parsed:
    result = ProxyParser(mode).feed(data)
    assert isinstance(result, Parsed), f"incomplete: {result}"
    return result


def refuse(data: bytes, mode: ProxyMode = "any") -> ProxyProtocolError:
    with pytest.raises(ProxyProtocolError) as info:
        ProxyParser(mode).feed(data)
    return info.value


class TestCRC32C:
    @pytest.mark.parametrize(
        ("data", "expected"),
        [
            (b"123456789", 0xE3069283),  # the standard check value
            (b"", 0x00000000),
            (bytes(32), 0x8A9136AA),  # RFC 3720 appendix B.4
            (b"\xff" * 32, 0x62A8AB43),
            (bytes(range(32)), 0x46DD794E),
        ],
    )
    def test_known_vectors(self, data: bytes, expected: int) -> None:
        """Gives the published CRC32C (Castagnoli) check values."""
        assert crc32c(data) == expected


V1_VALID: list[tuple[bytes, ProxyHeader]] = [
    (
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
        ProxyHeader(1, Command.PROXY, socket.AF_INET, socket.SOCK_STREAM, ("192.168.0.1", 56324), ("192.168.0.11", 443), ()),
    ),
    (
        b"PROXY TCP4 255.255.255.255 0.0.0.0 65535 0\r\n",
        ProxyHeader(1, Command.PROXY, socket.AF_INET, socket.SOCK_STREAM, ("255.255.255.255", 65535), ("0.0.0.0", 0), ()),
    ),
    (
        b"PROXY TCP6 2001:DB8:0:0:0:0:0:1 ::1 1 2\r\n",
        ProxyHeader(
            1, Command.PROXY, socket.AF_INET6, socket.SOCK_STREAM, ("2001:db8::1", 1, 0, 0), ("::1", 2, 0, 0), ()
        ),
    ),
    (
        b"PROXY TCP6 ::ffff:192.0.2.1 ::ffff:192.0.2.2 80 81\r\n",
        ProxyHeader(
            1,
            Command.PROXY,
            socket.AF_INET6,
            socket.SOCK_STREAM,
            ("::ffff:192.0.2.1", 80, 0, 0),
            ("::ffff:192.0.2.2", 81, 0, 0),
            (),
            52,
        ),
    ),
    (b"PROXY UNKNOWN\r\n", ProxyHeader(1, Command.PROXY, socket.AF_UNSPEC, None, None, None, (), 15)),
    (
        b"PROXY UNKNOWN " + b"f" * 91 + b"\r\n",  # 107 bytes: the longest line
        ProxyHeader(1, Command.PROXY, socket.AF_UNSPEC, None, None, None, ()),
    ),
    (
        b"PROXY UNKNOWN ffff:f::f whatever the sender put here\r\n",
        ProxyHeader(1, Command.PROXY, socket.AF_UNSPEC, None, None, None, ()),
    ),
]

V1_INVALID: list[tuple[bytes, str]] = [
    (b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
    (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "single spaces"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "single spaces"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "single spaces"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "single spaces"),
    (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "canonical"),
    (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "canonical"),
    (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "canonical"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n", "leading zeros"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", "0..65535"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "0..65535"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "0..65535"),
    (b"PROXY TCP4 ::1 ::1 1 2\r\n", "IPv4"),
    (b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n", "IPv6"),
    (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "IPv6"),
    (b"PROXY TCP6 1::2::3 ::1 1 2\r\n", "IPv6"),
    (b"PROXY TCP6 12345::1 ::1 1 2\r\n", "IPv6"),
    (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
    (b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
    (b"PROXY UNKNOWNX\r\n", "unknown protocol"),
    (b"PROXY \r\n", "unknown protocol"),
    (b"PROXY\tTCP4 1.2.3.4 5.6.7.8 1 2\r\n", "start with 'PROXY '"),
    (b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "expected a v1"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "lone LF"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n", "CR not followed by LF"),
    (b"PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n", "CR not followed by LF"),
    (b"PROXY UNKNOWN " + b"f" * 92 + b"\r\n", "no CRLF within the first 107 bytes"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\xe9\r\n", "0..65535"),
    (b"GET / HTTP/1.1\r\n", "expected a v1"),
]


class TestV1:
    @pytest.mark.parametrize(("line", "expected"), V1_VALID)
    def test_valid_lines(self, line: bytes, expected: ProxyHeader) -> None:
        """Parses each valid v1 line into the expected header, with canonical IPv6 text."""
        for mode in ("v1", "any"):
            result = parse(line + b"payload", mode)
            assert result.header == attrs.evolve(expected, length=len(line))
            assert result.leftover == b"payload"

    @pytest.mark.parametrize(("line", "reason"), V1_INVALID)
    def test_invalid_lines(self, line: bytes, reason: str) -> None:
        """Refuses each malformed v1 line with a reason naming the problem."""
        assert reason in refuse(line, "v1").reason

    def test_garbage_is_refused_at_the_first_byte(self) -> None:
        """Refuses at once a connection that does not start a header: no waiting for 107 bytes."""
        with pytest.raises(ProxyProtocolError, match="expected a v1 header"):
            ProxyParser("v1").feed(b"G")

    def test_bounds_before_the_line_ends(self) -> None:
        """Asks for at most 107 bytes in all, and never for more than could be header."""
        parser = ProxyParser("v1")
        assert parser.next_step() == NeedData(15, 107)
        assert parser.feed(b"PROXY TCP4 1.2.3.4") == NeedData(2, 107 - 18)
        assert parser.feed(b" 5.6.7.8 1 2\r") == NeedData(1, 107 - 31)
        assert isinstance(parser.feed(b"\n"), Parsed)

    def test_long_line_is_refused_at_the_bound(self) -> None:
        """Refuses a line without CRLF once 107 bytes have come, not later."""
        parser = ProxyParser("v1")
        assert isinstance(parser.feed(b"PROXY UNKNOWN " + b"x" * 92), NeedData)
        with pytest.raises(ProxyProtocolError, match="107"):
            parser.feed(b"x")


def header_with(*tlvs: bytes, checksum: bool = False) -> bytes:
    return v2(0x11, ipv4_block(), b"".join(tlvs), checksum=checksum)


SSL_VALUE = (
    bytes([SSLInfo.CLIENT_SSL | SSLInfo.CLIENT_CERT_CONN])
    + struct.pack("!I", 0)
    + tlv(0x21, b"TLSv1.3")
    + tlv(0x22, "Zoë".encode())
    + tlv(0x23, b"TLS_AES_256_GCM_SHA384")
    + tlv(0x24, b"SHA256")
    + tlv(0x25, b"RSA2048")
    + tlv(0x2F, b"\x01\x02")
)

V2_VALID: list[tuple[str, bytes, ProxyHeader]] = [
    (
        "tcp4",
        v2(0x11, ipv4_block()),
        ProxyHeader(2, Command.PROXY, socket.AF_INET, socket.SOCK_STREAM, ("192.0.2.1", 40000), ("198.51.100.2", 443), ()),
    ),
    (
        "udp4",
        v2(0x12, ipv4_block(sport=53, dport=5353)),
        ProxyHeader(2, Command.PROXY, socket.AF_INET, socket.SOCK_DGRAM, ("192.0.2.1", 53), ("198.51.100.2", 5353), ()),
    ),
    (
        "tcp6",
        v2(0x21, ipv6_block()),
        ProxyHeader(
            2, Command.PROXY, socket.AF_INET6, socket.SOCK_STREAM, ("2001:db8::1", 40000, 0, 0), ("2001:db8::2", 443, 0, 0), ()
        ),
    ),
    (
        "udp6",
        v2(0x22, ipv6_block()),
        ProxyHeader(
            2, Command.PROXY, socket.AF_INET6, socket.SOCK_DGRAM, ("2001:db8::1", 40000, 0, 0), ("2001:db8::2", 443, 0, 0), ()
        ),
    ),
    (
        "unix-stream",
        v2(0x31, unix_block(b"/run/client.sock", b"/run/haproxy.sock")),
        ProxyHeader(2, Command.PROXY, socket.AF_UNIX, socket.SOCK_STREAM, "/run/client.sock", "/run/haproxy.sock", ()),
    ),
    (
        "unix-dgram-abstract",
        v2(0x32, unix_block(b"\0client", b"")),
        ProxyHeader(2, Command.PROXY, socket.AF_UNIX, socket.SOCK_DGRAM, b"\0client", "", ()),
    ),
    ("unspec", v2(0x00), ProxyHeader(2, Command.PROXY, socket.AF_UNSPEC, None, None, None, (), 16)),
    ("local-empty", v2(0x00, command=0x0), ProxyHeader(2, Command.LOCAL, socket.AF_UNSPEC, None, None, None, (), 16)),
    (
        "local-haproxy-2.6",
        HAPROXY_LOCAL_CHECK,
        ProxyHeader(2, Command.LOCAL, socket.AF_UNSPEC, None, None, None, (CRC32C(0xA9B87E8F),)),
    ),
    (
        "local-with-address-block",  # the family is ignored, its block still skipped
        v2(0x11, ipv4_block(), tlv(0x05, b"id"), command=0x0),
        ProxyHeader(2, Command.LOCAL, socket.AF_UNSPEC, None, None, None, (UniqueID(b"id"),)),
    ),
    (
        "haproxy-2.6-relayed",
        HAPROXY_RELAYED[:38],
        ProxyHeader(
            2,
            Command.PROXY,
            socket.AF_INET,
            socket.SOCK_STREAM,
            ("127.0.0.1", 35362),
            ("127.0.0.1", 60741),
            (CRC32C(0x4CAEAC6A), UniqueID(b"")),
        ),
    ),
    (
        "every-tlv",
        header_with(
            tlv(0x01, b"h2"),
            tlv(0x02, "bücher.example".encode()),
            tlv(0x04, b"\0\0\0"),
            tlv(0x05, b"u" * 128),
            tlv(0x20, SSL_VALUE),
            tlv(0x30, b"blue"),
            tlv(0xE0, b"custom"),
            tlv(0x04, b""),
        ),
        ProxyHeader(
            2,
            Command.PROXY,
            socket.AF_INET,
            socket.SOCK_STREAM,
            ("192.0.2.1", 40000),
            ("198.51.100.2", 443),
            (
                ALPN(b"h2"),
                Authority("bücher.example"),
                Noop(b"\0\0\0"),
                UniqueID(b"u" * 128),
                SSLInfo(
                    client=3,
                    verify=0,
                    version="TLSv1.3",
                    cn="Zoë",
                    cipher="TLS_AES_256_GCM_SHA384",
                    sig_alg="SHA256",
                    key_alg="RSA2048",
                    others=(RawTLV(0x2F, b"\x01\x02"),),
                ),
                NetNS("blue"),
                RawTLV(0xE0, b"custom"),
                Noop(b""),
            ),
        ),
    ),
]

V2_INVALID: list[tuple[str, bytes, str]] = [
    ("signature", b"\r\n\r\n\x00\r\nQUIT\r" + bytes(4), "bad signature"),
    ("version-1", v2(0x11, ipv4_block(), version=0x1), "version 1"),
    ("version-3", v2(0x11, ipv4_block(), version=0x3), "version 3"),
    ("command-2", v2(0x11, ipv4_block(), command=0x2), "unknown command"),
    ("command-f", v2(0x11, ipv4_block(), command=0xF), "unknown command"),
    ("family-4", v2(0x41, ipv4_block()), "family/protocol byte 0x41"),
    ("protocol-3", v2(0x13, ipv4_block()), "family/protocol byte 0x13"),
    ("inet-unspec-protocol", v2(0x10, ipv4_block()), "family/protocol byte 0x10"),
    ("over-cap", v2(0x11, ipv4_block(), length=2049), "exceeds the limit of 2048"),
    ("short-ipv4", v2(0x11, ipv4_block()[:8]), "shorter than the 12-byte IPv4"),
    ("short-ipv6", v2(0x21, ipv4_block()), "shorter than the 36-byte IPv6"),
    ("short-unix", v2(0x31, ipv6_block()), "shorter than the 216-byte Unix"),
    ("short-local", v2(0x11, b"", command=0x0), "shorter than the 12-byte IPv4"),
    ("stray-tlv-bytes", header_with(b"\x05\x00"), "2 stray bytes"),
    ("tlv-overrun", header_with(b"\x05\x00\x09abc"), "declares 9 bytes but only 3 remain"),
    ("crc-mismatch", header_with(tlv(0x03, b"\x12\x34\x56\x78")), "CRC32C mismatch"),
    ("crc-size", header_with(tlv(0x03, b"\x12\x34")), "CRC32C TLV of 2 bytes"),
    ("crc-twice", header_with(tlv(0x03, b"\0\0\0\0"), checksum=True), "more than one CRC32C"),
    ("unique-id-129", header_with(tlv(0x05, b"u" * 129)), "UNIQUE_ID TLV of 129 bytes"),
    ("authority-utf8", header_with(tlv(0x02, b"\xff\xfe")), "AUTHORITY TLV is not utf-8"),
    ("netns-ascii", header_with(tlv(0x30, "é".encode())), "NETNS TLV is not ascii"),
    ("ssl-short", header_with(tlv(0x20, b"\x01\0\0")), "SSL TLV of 3 bytes"),
    ("ssl-sub-overrun", header_with(tlv(0x20, b"\x01\0\0\0\0" + b"\x21\x00\x05v1")), "SSL TLV 0x21 declares 5"),
    ("ssl-version-ascii", header_with(tlv(0x20, b"\x01\0\0\0\0" + tlv(0x21, "é".encode()))), "not ascii"),
    ("v1-signature-in-v2-mode", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "expected a v2 header"),
]


class TestV2:
    @pytest.mark.parametrize(("name", "raw", "expected"), V2_VALID, ids=[c[0] for c in V2_VALID])
    def test_valid_headers(self, name: str, raw: bytes, expected: ProxyHeader) -> None:
        """Parses each valid v2 header into the expected typed header, leaving what follows."""
        for mode in ("v2", "any"):
            result = parse(raw + b"\x16\x03\x01", mode)
            assert result.header == attrs.evolve(expected, length=len(raw))
            assert result.leftover == b"\x16\x03\x01"

    @pytest.mark.parametrize(("name", "raw", "reason"), V2_INVALID, ids=[c[0] for c in V2_INVALID])
    def test_invalid_headers(self, name: str, raw: bytes, reason: str) -> None:
        """Refuses each malformed v2 header with a reason naming the problem."""
        assert reason in refuse(raw, "v2").reason

    def test_good_checksum_is_verified(self) -> None:
        """Accepts a header whose CRC32C covers it with the checksum field zeroed."""
        raw = header_with(tlv(0x05, b"abc"), checksum=True)
        header = parse(raw).header
        assert header.find(CRC32C) == CRC32C(int.from_bytes(raw[-4:], "big"))

    @pytest.mark.parametrize("position", [0, 13, 17, 30, 35, 40])
    def test_any_changed_byte_breaks_the_checksum(self, position: int) -> None:
        """Refuses a checksummed header with any byte altered (signature, addresses, TLVs, the CRC itself)."""
        raw = bytearray(header_with(tlv(0x05, b"abcdef"), checksum=True))
        raw[position] ^= 0x01
        with pytest.raises(ProxyProtocolError):
            ProxyParser("v2").feed(bytes(raw))

    def test_haproxy_local_check_is_not_taken_for_length_zero(self) -> None:
        """Skips the whole declared length of a LOCAL header: the TLV bytes are not left for the handler."""
        result = parse(HAPROXY_LOCAL_CHECK + b"GET /", "v2")
        assert result.leftover == b"GET /"
        assert result.header.command is Command.LOCAL

    def test_bounds_are_exact(self) -> None:
        """Asks for 16 bytes, then exactly the declared length: never a byte past the header."""
        raw = header_with(tlv(0x05, b"abc"))
        parser = ProxyParser("v2")
        assert parser.next_step() == NeedData(16, 16)
        assert parser.feed(raw[:10]) == NeedData(6, 6)
        assert parser.feed(raw[10:16]) == NeedData(len(raw) - 16, len(raw) - 16)
        assert isinstance(parser.feed(raw[16:]), Parsed)

    def test_oversize_is_refused_from_the_fixed_part(self) -> None:
        """Refuses a declared length over the cap after 16 bytes, without waiting for the body."""
        parser = ProxyParser("v2", max_v2_length=100)
        with pytest.raises(ProxyProtocolError, match="exceeds the limit of 100"):
            parser.feed(V2_SIGNATURE + b"\x21\x11\x00\x65")

    def test_bad_version_is_refused_at_byte_13(self) -> None:
        """Refuses a wrong version as soon as byte 13 arrives."""
        with pytest.raises(ProxyProtocolError, match="version 1"):
            ProxyParser("v2").feed(V2_SIGNATURE + b"\x11")

    def test_cap_accepts_up_to_65535(self) -> None:
        """Takes a cap up to the 16-bit maximum and refuses a larger or negative one."""
        raw = v2(0x11, ipv4_block(), tlv(0xE1, bytes(65535 - 15)))
        assert parse_with_cap(raw, 65535).header.find(RawTLV) == RawTLV(0xE1, bytes(65520))
        for bad in (-1, 65536):
            with pytest.raises(ValueError, match="max_v2_length"):
                ProxyParser("v2", max_v2_length=bad)


def parse_with_cap(raw: bytes, cap: int) -> Parsed:
    result = ProxyParser("v2", max_v2_length=cap).feed(raw)
    assert isinstance(result, Parsed)
    return result


class TestModes:
    def test_v1_mode_refuses_v2(self) -> None:
        """A v1 listener refuses a v2 header at its first byte."""
        with pytest.raises(ProxyProtocolError, match="expected a v1 header"):
            ProxyParser("v1").feed(HAPROXY_LOCAL_CHECK[:1])

    def test_any_mode_refuses_what_is_neither(self) -> None:
        """An 'any' listener still requires a header: a plain request is refused."""
        with pytest.raises(ProxyProtocolError, match="expected a v1 or v2 header"):
            ProxyParser("any").feed(b"\x16\x03\x01\x02\x00")

    def test_mode_is_checked(self) -> None:
        """A mode other than v1, v2 or any is refused when the parser is built."""
        with pytest.raises(ValueError, match="mode"):
            ProxyParser("v3")  # type: ignore[arg-type]  # the point of the test

    def test_empty_feed_changes_nothing(self) -> None:
        """Feeding no bytes asks again for the same bounds."""
        parser = ProxyParser("any")
        assert parser.feed(b"") == parser.next_step() == NeedData(15, 107)

    def test_no_feeding_after_the_header(self) -> None:
        """A parser that has returned the header takes no more bytes."""
        parser = ProxyParser("v2")
        parser.feed(HAPROXY_LOCAL_CHECK)
        with pytest.raises(ServerStateError):
            parser.feed(b"x")


class TestResults:
    def test_client_address_is_the_source(self) -> None:
        """A relayed header names its source as the client."""
        header = parse(HAPROXY_RELAYED).header
        assert header.client_address(("127.0.0.1", 5)) == ("127.0.0.1", 35362)

    @pytest.mark.parametrize("raw", [HAPROXY_LOCAL_CHECK, b"PROXY UNKNOWN\r\n", v2(0x00)])
    def test_no_client_means_the_real_peer(self, raw: bytes) -> None:
        """LOCAL, UNKNOWN and UNSPEC headers leave the real peer as the client."""
        assert parse(raw).header.client_address(("10.0.0.9", 7)) == ("10.0.0.9", 7)

    def test_tlv_shortcuts(self) -> None:
        """unique_id, alpn, authority and ssl return the first TLV of their type, or None."""
        header = parse(V2_VALID[-1][1]).header
        assert header.unique_id == b"u" * 128
        assert header.alpn == b"h2"
        assert header.authority == "bücher.example"
        ssl = header.ssl
        assert ssl is not None and ssl.ssl and ssl.cert_in_connection and not ssl.cert_in_session and ssl.verified
        bare = parse(v2(0x11, ipv4_block())).header
        assert (bare.unique_id, bare.alpn, bare.authority, bare.ssl) == (None, None, None, None)

    def test_unverified_certificate(self) -> None:
        """An SSL TLV with a non-zero verify field is not verified, nor is one without a certificate."""
        assert not SSLInfo(client=SSLInfo.CLIENT_SSL | SSLInfo.CLIENT_CERT_CONN, verify=1).verified
        assert not SSLInfo(client=SSLInfo.CLIENT_SSL, verify=0).verified

    def test_request_accessors(self) -> None:
        """proxy_header_of, proxied_client_address and reply_address fall back for a request without a header."""
        assert proxy_header_of(object()) is None
        assert proxied_client_address(object(), ("1.2.3.4", 5)) == ("1.2.3.4", 5)
        assert reply_address((b"data", object()), ("1.2.3.4", 5)) == ("1.2.3.4", 5)

    def test_an_attribute_alone_is_not_a_header(self) -> None:
        """A request with a client_address attribute but no ProxyHeader keeps the accepted address."""

        class Lookalike:
            client_address = ("6.6.6.6", 1)
            proxy_header = "not a header"

        assert proxied_client_address(Lookalike(), ("1.2.3.4", 5)) == ("1.2.3.4", 5)


class TestProxyProtocolError:
    def test_is_value_and_os_error_with_fields(self) -> None:
        """ProxyProtocolError is a ServerError, a ValueError and an OSError (EPROTO), with reason and peer."""
        exc = ProxyProtocolError("bad line", peer=("127.0.0.1", 9))
        assert all(issubclass(ProxyProtocolError, base) for base in (ServerError, ValueError, OSError))
        assert (exc.errno, exc.reason, exc.peer, exc.timed_out) == (errno.EPROTO, "bad line", ("127.0.0.1", 9), False)
        assert str(exc) == "PROXY protocol from ('127.0.0.1', 9): bad line"

    def test_timeout_has_etimedout(self) -> None:
        """A header that missed its deadline has errno ETIMEDOUT and timed_out set."""
        exc = ProxyProtocolError("slow", timed_out=True)
        assert exc.errno == errno.ETIMEDOUT and exc.timed_out
        assert str(exc) == "PROXY protocol: slow"


class TestTransportOptions:
    @pytest.mark.parametrize(
        ("options", "message"),
        [
            ({"mode": "v3"}, "mode"),
            ({"mode": "v2", "timeout": 0.0}, "timeout"),
            ({"mode": "v2", "timeout": float("nan")}, "timeout"),
            ({"mode": "v2", "max_v2_length": 70000}, "max_v2_length"),
            ({"mode": "v2", "trusted": ["10.0.0.0/33"]}, "10.0.0.0/33"),
        ],
    )
    def test_bad_options_are_refused(self, options: dict[str, object], message: str) -> None:
        """Refuses a bad mode, timeout, cap or trust network when built, naming it."""
        with pytest.raises(ValueError, match=message):
            ProxyProtocolTransport(MemoryTransport(('127.0.0.1', 0)), **options)  # type: ignore[arg-type]  # deliberately loose

    def test_mode_is_required(self) -> None:
        """There is no default mode: the PROXY protocol is never guessed."""
        with pytest.raises(TypeError, match="mode"):
            ProxyProtocolTransport(MemoryTransport(('127.0.0.1', 0)))  # type: ignore[call-arg]  # the point of the test

    def test_default_trust_is_loopback(self) -> None:
        """Trusts the loopback networks by default, and takes a single CIDR string."""
        transport = ProxyProtocolTransport(MemoryTransport(('127.0.0.1', 0)), mode="v1")
        assert [str(n) for n in transport.trusted.networks] == ["127.0.0.0/8", "::1/128"]
        one = ProxyProtocolTransport(MemoryTransport(('127.0.0.1', 0)), mode="v1", trusted="10.0.0.0/8")
        assert [str(n) for n in one.trusted.networks] == ["10.0.0.0/8"]


# -- properties ----------------------------------------------------------------------


def feed_in_pieces(parser: ProxyParser, data: bytes, cuts: list[int]) -> NeedData | Parsed:
    """Feed *data* split at *cuts*; stop at the first Parsed and return it with the rest appended."""
    result: NeedData | Parsed = parser.next_step()
    points = sorted({c for c in cuts if 0 < c < len(data)})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]
    for index, piece in enumerate(pieces):
        result = parser.feed(piece)
        if isinstance(result, Parsed):
            return Parsed(result.header, result.leftover + b"".join(pieces[index + 1 :]))
    return result


ipv4s = st.ip_addresses(v=4).map(str)
ipv6s = st.ip_addresses(v=6).map(str)
ports = st.integers(0, 65535)


@st.composite
def v1_lines(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return f"PROXY TCP4 {draw(ipv4s)} {draw(ipv4s)} {draw(ports)} {draw(ports)}\r\n".encode()
    return f"PROXY TCP6 {draw(ipv6s)} {draw(ipv6s)} {draw(ports)} {draw(ports)}\r\n".encode()


tlv_values = st.one_of(
    st.tuples(st.sampled_from([0x01, 0x04, 0xE0, 0xF1]), st.binary(max_size=40)),
    st.tuples(st.just(0x02), st.text(max_size=20).map(str.encode)),
    st.tuples(st.just(0x05), st.binary(max_size=128)),
    st.tuples(st.just(0x30), st.text(alphabet="abcdefgh-", max_size=10).map(str.encode)),
)


@st.composite
def v2_headers(draw: st.DrawFn) -> bytes:
    fam = draw(st.sampled_from([0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32]))
    block = {
        0x0: b"",
        0x1: ipv4_block(draw(ipv4s), draw(ipv4s), draw(ports), draw(ports)),
        0x2: ipv6_block(draw(ipv6s), draw(ipv6s), draw(ports), draw(ports)),
        0x3: unix_block(b"/tmp/" + draw(st.binary(max_size=40)).replace(b"\0", b""), b"/run/x"),
    }[fam >> 4]
    tlvs = b"".join(tlv(k, v) for k, v in draw(st.lists(tlv_values, max_size=4)))
    return v2(fam, block, tlvs, command=draw(st.sampled_from([0x0, 0x1])), checksum=draw(st.booleans()))


class TestProperties:
    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=300), st.sampled_from(["v1", "v2", "any"]), st.lists(st.integers(0, 300), max_size=8))
    def test_any_bytes_are_parsed_or_refused(self, data: bytes, mode: ProxyMode, cuts: list[int]) -> None:
        """Any byte string, in any pieces, is parsed, still incomplete, or refused with ProxyProtocolError."""
        try:
            result = feed_in_pieces(ProxyParser(mode), data, cuts)
        except ProxyProtocolError:
            return
        if isinstance(result, NeedData):
            # Incomplete only while a header can still fit in the bounds.
            assert 1 <= result.read <= result.peek
            assert len(data) < (V1_MAX_LENGTH if data[:1] == b"P" or not data else 16 + 65535)

    @settings(max_examples=150, deadline=None)
    @given(st.one_of(v1_lines(), v2_headers()), st.binary(max_size=20))
    def test_valid_prefixes_fuzzed(self, header: bytes, junk: bytes) -> None:
        """A valid header with any byte overwritten is parsed, incomplete, or refused; nothing else."""
        for position in range(0, len(header), max(1, len(header) // 16)):
            mutated = header[:position] + junk[:1] + header[position + 1 :]
            try:
                ProxyParser("any").feed(mutated)
            except ProxyProtocolError:
                pass

    @settings(max_examples=200, deadline=None)
    @given(st.one_of(v1_lines(), v2_headers()), st.binary(max_size=20), st.lists(st.integers(0, 400), max_size=10))
    def test_split_anywhere_gives_the_same_result(self, header: bytes, after: bytes, cuts: list[int]) -> None:
        """A valid header parses the same whole or split at any points, and what follows is kept."""
        whole = ProxyParser("any").feed(header + after)
        assert isinstance(whole, Parsed)
        assert whole.header.length == len(header)
        assert whole.leftover == after
        pieces = feed_in_pieces(ProxyParser("any"), header + after, cuts)
        assert pieces == whole

    @settings(max_examples=100, deadline=None)
    @given(st.one_of(v1_lines(), v2_headers()), st.binary(min_size=1, max_size=20))
    def test_reading_the_safe_bound_never_passes_the_header(self, header: bytes, after: bytes) -> None:
        """A reader that takes exactly NeedData.read bytes each time ends on the header's last byte."""
        stream = header + after
        parser = ProxyParser("v1" if header[:1] == b"P" else "v2")
        offset = 0
        step: NeedData | Parsed = parser.next_step()
        while isinstance(step, NeedData):
            assert step.read <= step.peek
            if header[:1] != b"P":
                assert step.read == step.peek  # v2: exact
            chunk = stream[offset : offset + step.read]
            offset += len(chunk)
            step = parser.feed(chunk)
        assert step.leftover == b""
        assert offset == len(header)
