"""The errors composable_server raises.

One base, :class:`ServerError`; each subclass also inherits the builtin that
callers already catch, so ``except ValueError`` keeps working for a bad
address and ``except OSError`` for a failed bind.  "We closed it"
(:class:`ServerClosedError`) is kept apart from "it broke under us" (an
:class:`OSError` from the kernel).
"""

from __future__ import annotations

__all__ = (
    "AddressError",
    "BindError",
    "ServerClosedError",
    "ServerError",
    "ServerStateError",
)


class ServerError(Exception):
    """Base class of every error raised by composable_server itself."""


class AddressError(ServerError, ValueError):
    """An address does not fit its family: wrong shape, bad port, path too long.

    Attributes:
        address: the offending value, as given.
        family: the address family it was checked against (a ``socket.AddressFamily``
            or None when the family itself could not be determined).
    """

    def __init__(self, message: str, *, address: object, family: object = None) -> None:
        super().__init__(message)
        self.address = address
        self.family = family


class BindError(ServerError, OSError):
    """The listening socket could not be bound (address in use, permission denied, ...).

    An :class:`OSError` with the kernel's ``errno`` and ``strerror``; the message
    also names the address.

    Attributes:
        address: the address that could not be bound.
    """

    def __init__(self, errno: int | None, strerror: str, *, address: object) -> None:
        super().__init__(errno, strerror)
        self.address = address

    def __str__(self) -> str:
        return f"cannot bind to {self.address!r}: {self.strerror} (errno {self.errno})"


class ServerClosedError(ServerError, RuntimeError):
    """The server (or component) was closed and then asked to do something."""


class ServerStateError(ServerError, RuntimeError):
    """A lifecycle method was called in a state where it cannot work, e.g.
    ``shutdown()`` from the thread running ``serve_forever()``, which would
    deadlock, or ``serve_forever()`` while it is already running."""
