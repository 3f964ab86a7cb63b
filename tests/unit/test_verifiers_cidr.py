"""Unit tests of the CIDR admission verifier (pure logic, no sockets)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from composable_server import AddressError, CIDRVerifier, all_of, allow_networks, client_ip, deny_networks


class TestParsing:
    def test_accepts_ipv4_ipv6_and_bare_addresses(self) -> None:
        """Parses IPv4 and IPv6 networks, and a bare address as a one-host network."""
        v = allow_networks("10.0.0.0/8", "2001:db8::/32", "192.0.2.7", "::1")
        assert [str(n) for n in v.networks] == ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32", "::1/128"]

    def test_masks_host_bits(self) -> None:
        """Masks host bits, as nginx and iptables do."""
        assert str(allow_networks("10.1.2.3/8").networks[0]) == "10.0.0.0/8"

    def test_v4_mapped_network_becomes_ipv4(self) -> None:
        """Turns a network inside ::ffff:0:0/96 into the IPv4 network it maps."""
        assert allow_networks("::ffff:10.0.0.0/104").networks == (ipaddress.IPv4Network("10.0.0.0/8"),)

    def test_accepts_network_objects(self) -> None:
        """Accepts ipaddress network objects as they are."""
        net = ipaddress.IPv6Network("fe80::/10")
        assert deny_networks(net).networks == (net,)

    @pytest.mark.parametrize("bad", ["", "10.0.0.0/33", "1.2.3.300/8", "not-a-network", "::1/129", "10.0.0.0/-1"])
    def test_bad_cidr_names_the_string(self, bad: str) -> None:
        """Raises AddressError, a ValueError, whose message names the bad string."""
        with pytest.raises(AddressError) as info:
            allow_networks("127.0.0.0/8", bad)
        assert repr(bad) in str(info.value)
        assert info.value.address == bad
        assert isinstance(info.value, ValueError)

    def test_rejects_non_strings(self) -> None:
        """Raises AddressError for a value that is neither a str nor a network."""
        with pytest.raises(AddressError, match="got 42"):
            CIDRVerifier((42,))

    def test_rejects_unknown_mode(self) -> None:
        """Refuses a mode other than allow or deny."""
        with pytest.raises(ValueError):
            CIDRVerifier(("10.0.0.0/8",), "maybe")  # type: ignore[arg-type]  # the point of the test

    @given(st.text(max_size=60))
    def test_any_string_parses_or_raises_address_error(self, text: str) -> None:
        """Every string either parses or raises AddressError, never anything else."""
        try:
            v = allow_networks(text)
        except AddressError as exc:
            assert repr(text) in str(exc)
        else:
            assert len(v.networks) == 1

    @given(st.from_regex(r"\A[0-9a-fA-F:./%]{0,45}\Z"))
    def test_address_like_strings_parse_or_raise_address_error(self, text: str) -> None:
        """Strings made of address characters either parse or raise AddressError."""
        try:
            deny_networks(text)
        except AddressError:
            pass

    @given(st.ip_addresses(), st.integers(min_value=0, max_value=128))
    def test_every_real_network_parses(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, prefix: int) -> None:
        """Every address with an in-range prefix parses to a network that admits it.

        The exception: an IPv4-mapped client is judged as IPv4, so it matches
        only a network that maps IPv4 too (prefix >= 96 inside ::ffff:0:0/96).
        """
        prefix = min(prefix, ip.max_prefixlen)
        v = allow_networks(f"{ip}/{prefix}")
        mapped = isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None
        expected = not mapped or prefix >= 96
        assert v.verify(None, (str(ip), 1, 0, 0) if ip.version == 6 else (str(ip), 1)) == expected


class TestClientIP:
    @pytest.mark.parametrize(
        ("address", "expected"),
        [
            (("127.0.0.1", 80), "127.0.0.1"),
            (("::1", 80, 0, 0), "::1"),
            (("::ffff:192.0.2.1", 80, 0, 0), "192.0.2.1"),
            (("fe80::1%lo", 80, 0, 1), "fe80::1%lo"),
            ("/tmp/sock", None),
            (b"\0abstract", None),
            ("", None),
            (None, None),
            (("localhost", 80), None),
            ((1, 2), None),
        ],
    )
    def test_extracts_ip_or_none(self, address: object, expected: str | None) -> None:
        """Returns the IP of an IP client (mapped IPv4 as IPv4) and None otherwise."""
        ip = client_ip(address)
        assert (None if ip is None else str(ip)) == expected


class TestCIDRVerifier:
    def test_allow_admits_inside(self) -> None:
        """Admits an address inside an allowed network."""
        assert allow_networks("127.0.0.0/8").verify(None, ("127.0.0.1", 5000))

    def test_allow_refuses_outside(self) -> None:
        """Refuses an address outside every allowed network."""
        assert not allow_networks("10.0.0.0/8", "::1").verify(None, ("127.0.0.1", 5000))

    def test_deny_refuses_inside_and_admits_outside(self) -> None:
        """A deny list refuses addresses inside it and admits the rest."""
        v = deny_networks("10.0.0.0/8")
        assert not v.verify(None, ("10.9.8.7", 1))
        assert v.verify(None, ("192.0.2.1", 1))

    def test_ipv6(self) -> None:
        """Judges IPv6 clients against IPv6 networks."""
        v = allow_networks("2001:db8::/32")
        assert v.verify(None, ("2001:db8::5", 1, 0, 0))
        assert not v.verify(None, ("2001:db9::5", 1, 0, 0))

    def test_v4_mapped_client_is_judged_as_ipv4(self) -> None:
        """An IPv4-mapped IPv6 client is judged by the IPv4 networks."""
        assert allow_networks("127.0.0.0/8").verify(None, ("::ffff:127.0.0.1", 1, 0, 0))
        assert not deny_networks("127.0.0.0/8").verify(None, ("::ffff:127.0.0.1", 1, 0, 0))

    def test_versions_do_not_mix(self) -> None:
        """An IPv4 client never matches an IPv6 network, and the reverse."""
        assert not allow_networks("::/0").verify(None, ("127.0.0.1", 1))
        assert not allow_networks("0.0.0.0/0").verify(None, ("::1", 1, 0, 0))

    def test_unix_clients(self) -> None:
        """Unix clients are refused by allow lists and admitted by deny lists by default."""
        for address in ("/tmp/s", "", None, b"\0name"):
            assert not allow_networks("0.0.0.0/0", "::/0").verify(None, address)
            assert deny_networks("0.0.0.0/0", "::/0").verify(None, address)

    def test_non_ip_override(self) -> None:
        """The non_ip option decides Unix clients explicitly."""
        assert CIDRVerifier(("127.0.0.0/8",), "allow", non_ip=True).verify(None, "/tmp/s")
        assert not CIDRVerifier(("127.0.0.0/8",), "deny", non_ip=False).verify(None, "/tmp/s")

    def test_match_reports_network(self) -> None:
        """match() names the first network containing the client."""
        v = deny_networks("10.0.0.0/8", "10.1.0.0/16")
        assert str(v.match(("10.1.2.3", 1))) == "10.0.0.0/8"
        assert v.match(("192.0.2.1", 1)) is None

    def test_policy_with_all_of(self) -> None:
        """all_of(deny_networks(...), allow_networks(...)) reads and acts as a policy."""
        policy = all_of(deny_networks("10.0.0.0/24"), allow_networks("10.0.0.0/8"))
        assert repr(policy) == "all_of(deny_networks('10.0.0.0/24'), allow_networks('10.0.0.0/8'))"
        assert not policy.verify(None, ("10.0.0.5", 1))
        assert policy.verify(None, ("10.5.0.5", 1))
        assert not policy.verify(None, ("192.0.2.1", 1))

    def test_frozen_and_equal(self) -> None:
        """Verifiers are immutable values compared by configuration."""
        assert allow_networks("10.0.0.0/8") == allow_networks("10.0.0.0/8")
        assert allow_networks("10.0.0.0/8") != deny_networks("10.0.0.0/8")
        assert not hasattr(allow_networks("10.0.0.0/8"), "__dict__")

    def test_refusal_is_logged_with_reason(self, caplog: pytest.LogCaptureFixture) -> None:
        """A refusal logs the client and the reason at DEBUG."""
        caplog.set_level("DEBUG", logger="composable_server.verifiers")
        deny_networks("10.0.0.0/8").verify(None, ("10.0.0.1", 1))
        assert "refused 10.0.0.1: in denied network 10.0.0.0/8" in caplog.text


class TestMappedProperty:
    @given(st.ip_addresses(v=4), st.integers(min_value=0, max_value=32))
    def test_mapped_client_is_judged_like_its_ipv4(self, ip: ipaddress.IPv4Address, prefix: int) -> None:
        """A ::ffff:a.b.c.d client gets the same verdict as a.b.c.d, for allow and deny lists."""
        network = ipaddress.IPv4Network((ip, prefix), strict=False)
        for other in ("192.0.2.0/24", str(network)):
            for make in (allow_networks, deny_networks):
                v = make(other)
                assert v.verify(None, (f"::ffff:{ip}", 1, 0, 0)) == v.verify(None, (str(ip), 1))
