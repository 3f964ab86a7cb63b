"""Property tests: every address either parses or raises the documented
AddressError, never anything else (hostile input reaches these through
configuration files and command lines)."""

from __future__ import annotations

import pathlib
import socket
import ssl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from composable_server import (
    AddressError,
    TCPTransport,
    TLSTransport,
    UDPTransport,
    UnixDatagramTransport,
    UnixStreamTransport,
)
from composable_server._socketutil import UNIX_PATH_MAX, check_inet_address, check_unix_address

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.binary(max_size=30),
)
_ports = st.one_of(st.integers(min_value=-5, max_value=70000), _scalars)
_hosts = st.one_of(st.sampled_from(["127.0.0.1", "::1", "", "localhost", "::ffff:1.2.3.4", "a\0b"]), _scalars)
# Mostly near-valid shapes (where the bugs hide), plus anything at all.
_inet = st.one_of(
    st.tuples(_hosts, _ports),
    st.tuples(_hosts, _ports, _ports, _ports),
    st.lists(st.one_of(_hosts, _ports), max_size=5).map(tuple),
    _scalars,
    st.lists(_scalars, max_size=3),
)
_paths = st.one_of(
    st.text(max_size=UNIX_PATH_MAX + 5),
    st.binary(max_size=UNIX_PATH_MAX + 5),
    st.text(max_size=UNIX_PATH_MAX + 5).map(lambda s: "\0" + s),
    st.binary(max_size=UNIX_PATH_MAX + 5).map(lambda b: b"\0" + b),
    st.text(min_size=1, max_size=120).map(pathlib.PurePosixPath),
    _scalars,
    st.tuples(st.text(max_size=5), st.integers()),
)
_families = st.sampled_from([socket.AF_INET, socket.AF_INET6])


class TestInetAddresses:
    @pytest.mark.timeout(30)
    @settings(max_examples=400, deadline=None)
    @given(address=_inet, family=_families)
    def test_check_inet_address_parses_or_raises_address_error(self, address: object, family: int) -> None:
        """check_inet_address returns a (host, port[, flowinfo, scope_id]) tuple or raises AddressError."""
        try:
            parsed = check_inet_address(address, family)
        except AddressError as exc:
            assert exc.address is address and exc.family == family
            assert str(exc)
            return
        # The declared return type promises (str, int, ...): check it at run time too.
        host: object = parsed[0]
        port: object = parsed[1]
        assert isinstance(host, str) and isinstance(port, int) and 0 <= port <= 65535
        assert len(parsed) in ((2,) if family == socket.AF_INET else (2, 4))

    @pytest.mark.timeout(30)
    @settings(max_examples=300, deadline=None)
    @given(address=_inet)
    def test_ip_transports_build_or_raise_address_error(self, address: object) -> None:
        """TCPTransport/UDPTransport either accept an address or raise AddressError at construction."""
        for cls in (TCPTransport, UDPTransport):
            try:
                transport = cls(address)  # type: ignore[arg-type]  # hostile input on purpose
            except AddressError:
                continue
            assert transport.server_address == address
            transport.close()  # no socket was created: nothing to release


class TestUnixAddresses:
    @pytest.mark.timeout(30)
    @settings(max_examples=400, deadline=None)
    @given(address=_paths)
    def test_check_unix_address_parses_or_raises_address_error(self, address: object) -> None:
        """check_unix_address returns a str or bytes path within sun_path, or raises AddressError."""
        try:
            parsed = check_unix_address(address)
        except AddressError as exc:
            assert str(exc) and exc.family == socket.AF_UNIX
            return
        result: object = parsed
        assert isinstance(result, (str, bytes)) and result

    @pytest.mark.timeout(30)
    @settings(max_examples=300, deadline=None)
    @given(address=_paths, mode=st.one_of(st.none(), st.integers(min_value=-1, max_value=0o1000)))
    def test_unix_transports_build_or_raise(self, address: object, mode: int | None) -> None:
        """Unix transports raise AddressError for a bad address, ValueError for a bad
        mode, and nothing else."""
        for cls in (UnixStreamTransport, UnixDatagramTransport):
            try:
                transport = cls(address, mode=mode)  # type: ignore[arg-type]  # hostile input on purpose
            except AddressError:
                continue
            except ValueError as exc:
                assert mode is not None and not 0 <= mode <= 0o777, exc
                continue
            assert transport.mode == mode
            transport.close()

    @pytest.mark.timeout(5)
    def test_mode_on_an_abstract_name_is_refused(self) -> None:
        """A mode for an abstract name (which has no file) is an AddressError naming it."""
        with pytest.raises(AddressError, match="abstract name"):
            UnixStreamTransport(b"\0composable-test", mode=0o600)

    @pytest.mark.timeout(5)
    def test_unencodable_path_is_an_address_error(self) -> None:
        """A path with a lone surrogate is an AddressError, not a UnicodeEncodeError."""
        with pytest.raises(AddressError, match="cannot be encoded"):
            check_unix_address("/tmp/\ud800.sock")


class TestTLSTransportArguments:
    @pytest.mark.timeout(5)
    @pytest.mark.parametrize("timeout", [0.0, -1.0, float("nan")])
    def test_handshake_timeout_must_be_positive(self, timeout: float) -> None:
        """A handshake deadline that is not a positive number fails at construction."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with pytest.raises(ValueError, match="handshake_timeout"):
            TLSTransport(TCPTransport(("127.0.0.1", 0)), context, handshake_timeout=timeout)

    @pytest.mark.timeout(5)
    def test_a_proxy_layer_inside_is_refused(self) -> None:
        """PROXY inside TLS would never read its header (TLS takes the first bytes): a TypeError naming the order."""
        from composable_server.proxy import ProxyProtocolTransport

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        proxied = ProxyProtocolTransport(TCPTransport(("127.0.0.1", 0)), mode="v1")
        with pytest.raises(TypeError, match=r"cannot wrap ProxyProtocolTransport.*ProxyProtocolTransport\(TLSTransport"):
            TLSTransport(proxied, context)
        with pytest.raises(TypeError, match="cannot wrap TLSTransport"):
            TLSTransport(TLSTransport(TCPTransport(("127.0.0.1", 0)), context), context)

    @pytest.mark.timeout(5)
    def test_delegates_to_the_inner_transport(self) -> None:
        """Address and closing are the inner transport's; the repr names both."""
        inner = TCPTransport(("127.0.0.1", 0))
        tls = TLSTransport(inner, ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), handshake_timeout=5.0)
        assert tls.server_address == ("127.0.0.1", 0)
        assert repr(tls).startswith("<TLSTransport over <TCPTransport AF_INET ('127.0.0.1', 0) unbound> ")
        assert "handshake_timeout=5.0 [completed: 0, failed: 0, timed out: 0]" in repr(tls)
        tls.close()
        assert tls.fileno() == -1 and inner.fileno() == -1
