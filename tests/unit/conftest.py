"""Unit tests run on the in-memory fakes: creating a socket here is a bug.

The autouse fixture below makes every way of getting a new socket raise, so
"unit tests need no sockets" is enforced rather than hoped for.
"""

from __future__ import annotations

import socket

import pytest


class SocketInUnitTestError(AssertionError):
    """A unit test tried to create a socket."""


def _forbidden(*args: object, **kwargs: object) -> None:
    raise SocketInUnitTestError(
        "unit tests must not create sockets; use composable_server.testing fakes "
        "or move the test to tests/integration/"
    )


@pytest.fixture(autouse=True)
def no_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make socket creation fail loudly for the duration of each unit test."""
    monkeypatch.setattr(socket.socket, "__init__", _forbidden)
    for name in ("socketpair", "fromfd", "create_connection", "create_server"):
        monkeypatch.setattr(socket, name, _forbidden)
