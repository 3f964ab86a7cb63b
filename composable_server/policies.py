"""Error and timeout policies.

Error policies (what a handler exception becomes):

* :class:`PrintTraceback` - the stdlib ``BaseServer.handle_error`` output on
  stderr (the default);
* :class:`LoggingErrorPolicy` - one ``logging`` record with the traceback;
* :class:`ReRaise` - re-raise, for tests that want a handler bug to fail loudly.

Timeout policies (what happens when no request arrives in time):

* :class:`NoTimeout` - ``handle_request()`` waits forever (stdlib default);
* :class:`FixedTimeout` - wait *timeout* seconds, then call *on_timeout*.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable
from typing import final

import attrs

__all__ = ("FixedTimeout", "LoggingErrorPolicy", "NoTimeout", "PrintTraceback", "ReRaise")

_logger = logging.getLogger("composable_server")


@final
@attrs.frozen
class PrintTraceback:
    """An error policy that prints what stdlib ``socketserver`` prints::

        ----------------------------------------
        Exception occurred during processing of request from ('127.0.0.1', 5555)
        Traceback (most recent call last):
        ...
        ----------------------------------------
    """

    def handle_error(self, request: object, client_address: object, exc: BaseException) -> None:
        """Print the banner, the client address and the traceback to ``sys.stderr``."""
        # sys.stderr looked up at call time, as stdlib does, so redirection works.
        print("-" * 40, file=sys.stderr)
        print("Exception occurred during processing of request from", client_address, file=sys.stderr)
        traceback.print_exception(exc, file=sys.stderr)
        print("-" * 40, file=sys.stderr)


@final
@attrs.frozen
class LoggingErrorPolicy:
    """An error policy that logs one record, with the traceback, per error.

    Args:
        logger: where to log (default: the ``composable_server`` logger).
        level: the record's level (default ``ERROR``).
    """

    logger: logging.Logger = attrs.field(default=_logger)
    level: int = attrs.field(default=logging.ERROR)

    def handle_error(self, request: object, client_address: object, exc: BaseException) -> None:
        """Log "error while serving <address>" with the exception attached."""
        self.logger.log(self.level, "error while serving %s", client_address, exc_info=exc)


@final
@attrs.frozen
class ReRaise:
    """An error policy that re-raises the exception (for tests).

    In the synchronous dispatcher the exception leaves ``serve_forever()`` /
    ``handle_request()``; in a thread it goes to ``threading.excepthook``; in a
    forked child it ends the child with status 1.
    """

    def handle_error(self, request: object, client_address: object, exc: BaseException) -> None:
        """Raise *exc* again."""
        raise exc


@final
@attrs.frozen
class NoTimeout:
    """A timeout policy without a timeout: ``handle_request()`` waits forever."""

    @property
    def timeout(self) -> None:
        """Always None."""
        return None

    def handle_timeout(self) -> None:
        """Never called by the server; does nothing."""


def _check_timeout(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"timeout must be a number of seconds >= 0, got {value!r}")


@final
@attrs.frozen
class FixedTimeout:
    """A timeout policy: ``handle_request()`` waits at most *timeout* seconds,
    then calls *on_timeout* (stdlib ``BaseServer.timeout`` / ``handle_timeout``).

    Args:
        timeout: seconds, >= 0.
        on_timeout: called with no arguments when the wait ran out.
    """

    timeout: float = attrs.field(validator=_check_timeout)
    on_timeout: Callable[[], object] = attrs.field(default=lambda: None)

    def handle_timeout(self) -> None:
        """Call *on_timeout*."""
        self.on_timeout()
