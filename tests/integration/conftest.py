"""Fixtures for the integration tests: real servers on loopback and Unix sockets."""

from __future__ import annotations

import functools
import resource
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ._support import IDLE_CLIENTS, KINDS, Dispatch, Family, Responder, ServerKind, ipv6_available


@functools.cache
def _ipv6() -> bool:
    return ipv6_available()


@pytest.fixture
def short_tmp_path(tmp_path: Path) -> Path:
    """``tmp_path``; Unix socket paths below it must fit in ``sun_path`` (107 bytes)."""
    if len(str(tmp_path / "c000.sock")) > 100:  # pragma: no cover - only with a deep basetemp
        pytest.skip(f"tmp_path is too long for Unix socket paths: {tmp_path}")
    return tmp_path


def _kind(param: tuple[Family, Dispatch], directory: Path) -> ServerKind:
    family, dispatch = param
    if family.is_ipv6 and not _ipv6():
        pytest.skip("IPv6 loopback (::1) is not available")
    return ServerKind(family, dispatch, directory)


def _ids(kinds: tuple[tuple[Family, Dispatch], ...]) -> list[str]:
    return [f"{f.value}-{d.value}" for f, d in kinds]


CONCURRENT_KINDS = tuple((f, d) for f, d in KINDS if d.concurrent)
STREAM_KINDS = tuple((f, d) for f, d in KINDS if f.is_stream)


@pytest.fixture(params=KINDS, ids=_ids(KINDS))
def server_kind(request: pytest.FixtureRequest, short_tmp_path: Path) -> ServerKind:
    """Every server kind: TCP and UDP over IPv4 and IPv6, Unix stream and
    datagram, each with synchronous, threading and forking dispatch."""
    return _kind(request.param, short_tmp_path)


@pytest.fixture(params=CONCURRENT_KINDS, ids=_ids(CONCURRENT_KINDS))
def concurrent_server_kind(request: pytest.FixtureRequest, short_tmp_path: Path) -> ServerKind:
    """The server kinds that serve several requests at once (threading, forking)."""
    return _kind(request.param, short_tmp_path)


@pytest.fixture(params=STREAM_KINDS, ids=_ids(STREAM_KINDS))
def stream_server_kind(request: pytest.FixtureRequest, short_tmp_path: Path) -> ServerKind:
    """The stream server kinds (TCP over IPv4 and IPv6, Unix stream) with every dispatch."""
    return _kind(request.param, short_tmp_path)


@pytest.fixture
def make_kind(short_tmp_path: Path) -> Callable[[Family, Dispatch], ServerKind]:
    """Build one particular server kind (skipping IPv6 kinds without ``::1``)."""

    def make(family: Family, dispatch: Dispatch = Dispatch.SYNC) -> ServerKind:
        return _kind((family, dispatch), short_tmp_path)

    return make


@pytest.fixture
def responder() -> Iterator[Responder]:
    """The shared handler behaviour (echo upper-cased, ``boom``, ``hold``)."""
    r = Responder()
    yield r
    r.close()


@pytest.fixture
def descriptors() -> Iterator[None]:
    """Raise RLIMIT_NOFILE for two descriptors per idle client (bounded, restored after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * IDLE_CLIENTS + 256
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below the {need} descriptors this test needs")
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
