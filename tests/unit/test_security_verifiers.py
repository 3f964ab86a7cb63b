"""Admission verifiers: per-IP cap, rate limit, peer credentials, and the
server's release hook, on fakes and a fake clock (no sockets)."""

from __future__ import annotations

import ipaddress
import logging

import pytest

from composable_server import (
    AllowAll,
    ConnectionCapStatistics,
    PeerCredentials,
    PeerCredentialsVerifier,
    RateLimitStatistics,
    Server,
    all_of,
    allow_networks,
    any_of,
    deny_networks,
    per_ip_cap,
    rate_limit,
)
from composable_server.testing import (
    InlineDispatcher,
    MemoryAcceptor,
    MemoryTransport,
    MemoryVerifier,
    RecordingErrorPolicy,
    RecordingHandler,
    check_verifier,
)
from composable_server.verifiers import ConnectionCapVerifier, RateLimitVerifier, releaser

A = ("192.0.2.1", 1000)
A2 = ("192.0.2.1", 1001)  # same client, another connection
B = ("198.51.100.7", 2000)
MAPPED_A = ("::ffff:192.0.2.1", 1002, 0, 0)
UNIX = "/run/app.sock"


class Clock:
    """A fake monotonic clock the test advances by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Request:
    """A fake request: a distinct object per connection."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Request({self.name!r})"


class TestConnectionCap:
    @pytest.mark.timeout(5)
    def test_refuses_over_the_cap_and_admits_after_release(self) -> None:
        """A client at its cap is refused until one of its requests is released."""
        cap = per_ip_cap(2)
        r1, r2, r3 = Request("1"), Request("2"), Request("3")
        assert cap.verify(r1, A) and cap.verify(r2, A2)
        assert cap.verify(r3, A) is False
        cap.release(r1)
        assert cap.verify(r3, A) is True
        assert cap.statistics() == ConnectionCapStatistics(admitted=3, refused=1, connections=2, clients=1)

    @pytest.mark.timeout(5)
    def test_clients_are_counted_apart(self) -> None:
        """One client at its cap does not affect another."""
        cap = per_ip_cap(1)
        assert cap.verify(Request("a"), A)
        assert cap.verify(Request("b"), B)
        assert cap.verify(Request("a2"), A2) is False

    @pytest.mark.timeout(5)
    def test_ipv4_mapped_client_counts_as_ipv4(self) -> None:
        """A dual-stack client ::ffff:a.b.c.d shares the slot count of a.b.c.d."""
        cap = per_ip_cap(1)
        assert cap.verify(Request("v4"), A)
        assert cap.verify(Request("mapped"), MAPPED_A) is False

    @pytest.mark.timeout(5)
    def test_unix_clients_are_not_counted(self) -> None:
        """A client without an IP address is admitted and holds no slot."""
        cap = per_ip_cap(1)
        assert all(cap.verify(Request(str(i)), UNIX) for i in range(5))
        assert cap.statistics().connections == 0

    @pytest.mark.timeout(5)
    def test_release_is_idempotent_and_ignores_strangers(self) -> None:
        """Releasing twice, or a request never admitted, changes nothing."""
        cap = per_ip_cap(1)
        r1 = Request("1")
        assert cap.verify(r1, A)
        cap.release(Request("stranger"))
        assert cap.connections(A) == 1
        cap.release(r1)
        cap.release(r1)
        assert cap.connections(A) == 0
        assert cap.statistics().clients == 0  # no empty entries left behind

    @pytest.mark.timeout(5)
    def test_ipv6_prefix_groups_a_network(self) -> None:
        """With ipv6_prefix=64, two addresses of one /64 share the cap."""
        cap = per_ip_cap(1, ipv6_prefix=64)
        assert cap.verify(Request("1"), ("2001:db8::1", 1, 0, 0))
        assert cap.verify(Request("2"), ("2001:db8::ffff", 1, 0, 0)) is False
        assert cap.verify(Request("3"), ("2001:db8:0:1::1", 1, 0, 0)) is True

    @pytest.mark.timeout(5)
    def test_refusals_are_logged_at_a_limited_rate(self, caplog: pytest.LogCaptureFixture) -> None:
        """A flood of refusals gives one record per interval, then one counting the rest."""
        clock = Clock()
        cap = ConnectionCapVerifier(1, clock=clock, log_interval=10.0)
        assert cap.verify(Request("held"), A)
        with caplog.at_level(logging.WARNING, logger="composable_server.verifiers"):
            for i in range(5):
                assert cap.verify(Request(str(i)), A) is False
            clock.advance(10.0)
            assert cap.verify(Request("late"), A) is False
        messages = [r.getMessage() for r in caplog.records]
        assert len(messages) == 2
        assert "refused 192.0.2.1" in messages[0] and "limit" in messages[0]
        assert "4 more refusals" in messages[1]

    @pytest.mark.timeout(5)
    def test_repr_shows_the_state(self) -> None:
        """The repr reads as the factory call plus the live counts."""
        cap = per_ip_cap(3)
        cap.verify(Request("1"), A)
        assert repr(cap) == "per_ip_cap(3) [connections: 1 from 1 clients | refused: 0]"

    @pytest.mark.timeout(5)
    def test_bad_limit_fails_at_construction(self) -> None:
        """A cap below 1 is a ValueError."""
        with pytest.raises(ValueError, match="limit"):
            per_ip_cap(0)

    @pytest.mark.timeout(5)
    def test_contract(self) -> None:
        """The cap passes the Verifier contract suite."""
        check_verifier(lambda: per_ip_cap(1), [(Request(str(i)), a) for i, a in enumerate((A, A2, B, MAPPED_A, UNIX))])


class TestRateLimit:
    @pytest.mark.timeout(5)
    def test_burst_then_refill(self) -> None:
        """A client gets *burst* requests at once, then one per 1/rate seconds."""
        clock = Clock()
        limiter = RateLimitVerifier(2.0, 3, clock=clock)
        assert [limiter.verify(None, A) for _ in range(4)] == [True, True, True, False]
        clock.advance(0.5)  # one token back
        assert [limiter.verify(None, A) for _ in range(2)] == [True, False]
        assert limiter.statistics() == RateLimitStatistics(admitted=4, refused=2, clients=1)

    @pytest.mark.timeout(5)
    def test_one_client_flooding_does_not_limit_another(self) -> None:
        """An empty bucket for one address leaves other addresses' buckets full."""
        limiter = rate_limit(0.001, 2)
        for _ in range(10):
            limiter.verify(None, A)
        assert limiter.verify(None, B) is True
        assert limiter.tokens(B) == pytest.approx(1.0, abs=0.01)

    @pytest.mark.timeout(5)
    def test_refilled_buckets_expire(self) -> None:
        """Buckets that have refilled are dropped, so idle clients cost no memory."""
        clock = Clock()
        limiter = RateLimitVerifier(1.0, 2, clock=clock)
        for i in range(100):
            limiter.verify(None, (f"10.0.{i // 256}.{i % 256}", 1))
        assert limiter.statistics().clients == 100
        clock.advance(2.0)  # every bucket has refilled
        limiter.verify(None, B)
        assert limiter.statistics().clients == 1

    @pytest.mark.timeout(5)
    def test_state_is_bounded_by_max_clients(self) -> None:
        """However many addresses flood, at most max_clients buckets are kept."""
        clock = Clock()
        limiter = RateLimitVerifier(0.001, 1, clock=clock, max_clients=50)
        for i in range(1000):
            limiter.verify(None, (str(ipaddress.IPv6Address(0x20010DB8 << 96 | i)), 1, 0, 0))
        assert limiter.statistics().clients == 50

    @pytest.mark.timeout(5)
    def test_ipv6_prefix_shares_a_bucket(self) -> None:
        """With ipv6_prefix=64, rotating addresses inside one /64 does not earn new tokens."""
        limiter = rate_limit(0.001, 1, ipv6_prefix=64)
        assert limiter.verify(None, ("2001:db8::1", 1, 0, 0))
        assert limiter.verify(None, ("2001:db8::2", 1, 0, 0)) is False
        assert "ipv6_prefix=64" in repr(limiter)

    @pytest.mark.timeout(5)
    def test_unix_clients_are_not_limited(self) -> None:
        """A client without an IP address is never refused and creates no bucket."""
        limiter = rate_limit(0.001, 1)
        assert all(limiter.verify(None, UNIX) for _ in range(10))
        assert limiter.statistics().clients == 0

    @pytest.mark.timeout(5)
    @pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
    def test_bad_parameters_fail_at_construction(self, rate: float, burst: int) -> None:
        """A non-positive rate or a burst below 1 is a ValueError."""
        with pytest.raises(ValueError):
            rate_limit(rate, burst)

    @pytest.mark.timeout(5)
    def test_contract(self) -> None:
        """The rate limiter passes the Verifier contract suite."""
        check_verifier(lambda: rate_limit(1.0, 1), [(None, a) for a in (A, A2, B, MAPPED_A, UNIX)])


class TestPolicies:
    @pytest.mark.timeout(5)
    def test_policy_reads_and_decides_in_order(self) -> None:
        """all_of(deny, cap, rate) refuses denied clients before they use a slot or a token."""
        cap = per_ip_cap(1)
        limiter = rate_limit(0.001, 5)
        policy = all_of(deny_networks("198.51.100.0/24"), cap, limiter)
        assert policy.verify(Request("b"), B) is False
        assert cap.statistics().admitted == 0 and limiter.statistics().admitted == 0
        assert "all_of(deny_networks('198.51.100.0/24'), per_ip_cap(1)" in repr(policy)

    @pytest.mark.timeout(5)
    def test_all_of_releases_a_slot_taken_before_a_later_refusal(self) -> None:
        """A cap that admitted a request a later member refused gets its slot back at release."""
        cap = per_ip_cap(1)
        policy = all_of(cap, MemoryVerifier(False))
        r1 = Request("1")
        assert policy.verify(r1, A) is False
        assert cap.connections(A) == 1
        releaser_of_policy = releaser(policy)
        assert releaser_of_policy is not None
        releaser_of_policy(r1)
        assert cap.connections(A) == 0

    @pytest.mark.timeout(5)
    def test_releaser_is_none_when_nothing_counts(self) -> None:
        """Servers whose verifiers count nothing get no release call at all."""
        assert releaser(AllowAll()) is None
        assert releaser(all_of(allow_networks("10.0.0.0/8"), any_of(AllowAll()))) is None
        assert releaser(any_of(AllowAll(), per_ip_cap(1))) is not None


class TestServerReleaseHook:
    @pytest.mark.timeout(5)
    def test_cap_learns_when_requests_end(self) -> None:
        """The server releases each request it finishes, so a capped client is
        served again once its earlier request ended; refused ones hold nothing."""
        transport: MemoryTransport[Request, tuple[str, int]] = MemoryTransport(("0.0.0.0", 0))
        dispatcher = InlineDispatcher(hold=True)
        cap = per_ip_cap(1)
        handler: RecordingHandler[Request, tuple[str, int]] = RecordingHandler()
        server = Server(
            transport=transport,
            acceptor=MemoryAcceptor(),
            handler=handler,
            verifier=cap,
            dispatcher=dispatcher,
            error_policy=RecordingErrorPolicy(),
        )
        try:
            first, second, third = Request("1"), Request("2"), Request("3")
            transport.connect(first, A)
            transport.connect(second, A2)
            server.handle_request()
            server.handle_request()
            assert cap.statistics().refused == 1
            assert second in transport.shutdown_requests  # refused and closed
            assert dispatcher.release() == 1  # the first one runs and ends
            assert cap.connections(A) == 0
            transport.connect(third, A)
            server.handle_request()
            dispatcher.release()
            assert [r for r, _ in handler.calls] == [first, third]
        finally:
            server.server_close()

    @pytest.mark.timeout(5)
    def test_job_closed_unserved_releases(self) -> None:
        """A job the dispatcher closes instead of running (rejected, or handed to a child) frees its slot."""
        transport: MemoryTransport[Request, tuple[str, int]] = MemoryTransport(("0.0.0.0", 0))
        dispatcher = InlineDispatcher(hold=True)
        cap = per_ip_cap(1)
        server = Server(
            transport=transport,
            acceptor=MemoryAcceptor(),
            handler=RecordingHandler[Request, tuple[str, int]](),
            verifier=cap,
            dispatcher=dispatcher,
        )
        try:
            transport.connect(Request("1"), A)
            server.handle_request()
            assert dispatcher.discard() == 1
            assert cap.connections(A) == 0
        finally:
            server.server_close()


class TestPeerCredentials:
    @staticmethod
    def _as(uid: int, gid: int) -> PeerCredentialsVerifier:
        creds = PeerCredentials(pid=4242, uid=uid, gid=gid)
        return PeerCredentialsVerifier(uids={1000}, gids={50}, credentials=lambda request: creds)

    @pytest.mark.timeout(5)
    @pytest.mark.parametrize(
        ("uid", "gid", "admitted"), [(1000, 1000, True), (1001, 50, True), (1001, 1001, False), (0, 0, False)]
    )
    def test_admits_chosen_uids_or_gids(self, uid: int, gid: int, admitted: bool) -> None:
        """A peer is admitted if its uid or its gid is one of those chosen (root is not special)."""
        assert self._as(uid, gid).verify(object(), UNIX) is admitted

    @pytest.mark.timeout(5)
    def test_refuses_a_request_without_credentials(self) -> None:
        """A request that is not a Unix stream socket has no credentials and is refused."""
        verifier = PeerCredentialsVerifier(uids={1000})
        assert verifier.verify(object(), A) is False

    @pytest.mark.timeout(5)
    def test_needs_someone_to_admit(self) -> None:
        """Neither uids nor gids is a ValueError, not a verifier that admits no one."""
        with pytest.raises(ValueError, match="at least one uid or gid"):
            PeerCredentialsVerifier()
