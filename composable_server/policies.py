"""Error and timeout policies.

Error policies (what a handler exception becomes):

* :class:`PrintTracebackErrorPolicy` - the stdlib ``BaseServer.handle_error``
  output on stderr (the default);
* :class:`LoggingErrorPolicy` - one ``logging`` record with the traceback;
* :class:`ReRaiseErrorPolicy` - re-raise, for tests that want a handler bug to
  fail loudly.

``PrintTraceback`` and ``ReRaise``, their older names, remain as aliases.

Timeout policies (what happens when no request arrives in time, and how long
one connection may take):

* :class:`NoTimeout` - ``handle_request()`` waits forever, connections have
  no limits (stdlib default, used by the compat classes);
* :class:`FixedTimeout` - wait *timeout* seconds, then call *on_timeout*;
* :class:`ConnectionTimeouts` - per-connection :class:`Budget` (first byte,
  idle, lifetime), counted and logged: the native default.

Accept-error policies (what a failing ``accept()`` becomes):

* :class:`RetryImmediately` - ignore it and poll again (stdlib; spins at
  100% CPU while out of descriptors);
* :class:`AcceptBackoff` - skip transient errors silently, back off
  exponentially (capped) on resource exhaustion, log at a limited rate: the
  native default.
"""

from __future__ import annotations

import errno
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import ClassVar, Final, final

import attrs

from ._socketutil import ACCEPT_TRANSIENT_ERRNOS
from ._util import LogLimiter

__all__ = (
    # error policies
    "LoggingErrorPolicy",
    "PrintTracebackErrorPolicy",
    "ReRaiseErrorPolicy",
    "PrintTraceback",  # older name of PrintTracebackErrorPolicy
    "ReRaise",  # older name of ReRaiseErrorPolicy
    # timeout policies
    "Budget",
    "ConnectionTimeouts",
    "DEFAULT_BUDGET",
    "FixedTimeout",
    "NoTimeout",
    # accept-error policies
    "AcceptBackoff",
    "RetryImmediately",
)

_logger = logging.getLogger("composable_server.policies")


@final
@attrs.frozen
class PrintTracebackErrorPolicy:
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
        logger: where to log (default: the ``composable_server.policies`` logger).
        level: the record's level (default ``ERROR``).
    """

    logger: logging.Logger = attrs.field(default=_logger)
    level: int = attrs.field(default=logging.ERROR)

    def handle_error(self, request: object, client_address: object, exc: BaseException) -> None:
        """Log "error while serving <address>" with the exception attached."""
        self.logger.log(self.level, "error while serving %s", client_address, exc_info=exc)


@final
@attrs.frozen
class ReRaiseErrorPolicy:
    """An error policy that re-raises the exception (for tests).

    In the synchronous dispatcher the exception leaves ``serve_forever()`` /
    ``handle_request()``; in a thread it goes to ``threading.excepthook``; in a
    forked child it ends the child with status 1.
    """

    def handle_error(self, request: object, client_address: object, exc: BaseException) -> None:
        """Raise *exc* again."""
        raise exc


# The older names, kept for the code that uses them.
PrintTraceback = PrintTracebackErrorPolicy
ReRaise = ReRaiseErrorPolicy


def _check_timeout(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"{attribute.name} must be a number of seconds >= 0, got {value!r}")


def _check_limit(instance: object, attribute: attrs.Attribute[float | None], value: float | None) -> None:
    if value is not None and not value > 0:  # also rejects NaN
        raise ValueError(f"{attribute.name} must be None or a number of seconds > 0, got {value!r}")


@final
@attrs.frozen
class Budget:
    """Per-connection time limits in seconds (None: no limit).

    Attributes:
        first_byte: a new connection silent this long is closed before its
            handler runs (slowloris, port scanners).
        idle: any single read or write blocked this long fails with
            ``TimeoutError`` (the connection's socket timeout).
        lifetime: a connection older than this has its socket shut down,
            waking a handler blocked in I/O (a client dribbling one byte a
            second defeats *idle* but not *lifetime*).
    """

    first_byte: float | None = attrs.field(default=None, validator=_check_limit)
    idle: float | None = attrs.field(default=None, validator=_check_limit)
    lifetime: float | None = attrs.field(default=None, validator=_check_limit)


DEFAULT_BUDGET: Final = Budget(first_byte=None, idle=300.0, lifetime=None)
"""The native API's default: no single read or write may block for more than
5 minutes.  *first_byte* is off because the server cannot know who speaks
first: in SMTP, FTP or POP3 the server greets and the client waits, so a
first-byte limit would cut every such connection before its handler ran.  Set
it for client-speaks-first protocols (HTTP, line protocols) to keep silent
connections out of the workers.  No total limit either: long-lived
connections are legitimate (set *lifetime* to bound them)."""


@final
@attrs.frozen
class NoTimeout:
    """A timeout policy without any timeout: ``handle_request()`` waits
    forever and connections have no time limits (stdlib)."""

    @property
    def timeout(self) -> None:
        """Always None."""
        return None

    def handle_timeout(self) -> None:
        """Never called by the server; does nothing."""

    # A class attribute, not a property: read on the path of every request
    # (in the loop and in a forked child), where a call costs a frame.
    budget: ClassVar[None] = None
    """Always None: no per-connection limits."""

    def budget_exceeded(self, client_address: object, limit: str) -> None:
        """Never called (there is no budget); does nothing."""


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

    # A class attribute, not a property: read on the path of every request
    # (in the loop and in a forked child), where a call costs a frame.
    budget: ClassVar[None] = None
    """Always None: no per-connection limits."""

    def budget_exceeded(self, client_address: object, limit: str) -> None:
        """Never called (there is no budget); does nothing."""


@final
@attrs.define(eq=False)
class ConnectionTimeouts:
    """A timeout policy that bounds each connection with a :class:`Budget`.

    Each cut connection is counted (:meth:`statistics`) and logged at INFO.

    Args:
        budget: the per-connection limits (default :data:`DEFAULT_BUDGET`).
        timeout: seconds ``handle_request()`` waits (None: forever).
        on_timeout: called when ``handle_request()`` waited in vain.
        logger: where cut connections are logged.
    """

    budget: Budget = attrs.field(default=DEFAULT_BUDGET)
    timeout: float | None = attrs.field(default=None, kw_only=True)
    on_timeout: Callable[[], object] = attrs.field(default=lambda: None, kw_only=True)
    logger: logging.Logger = attrs.field(default=_logger, kw_only=True)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    _exceeded: dict[str, int] = attrs.field(init=False, factory=dict)

    def handle_timeout(self) -> None:
        """Call *on_timeout*."""
        self.on_timeout()

    def budget_exceeded(self, client_address: object, limit: str) -> None:
        """Count and log the cut connection."""
        with self._lock:
            self._exceeded[limit] = self._exceeded.get(limit, 0) + 1
        if limit == "parked":  # not a time limit: the cap on kept connections (Server.max_parked)
            self.logger.info("closed parked connection from %s: least recently used beyond the cap", client_address)
            return
        seconds = getattr(self.budget, limit, None)
        self.logger.info("closed connection from %s: %s limit of %s s exceeded", client_address, limit, seconds)

    def statistics(self) -> dict[str, int]:
        """How many connections were cut, by limit (``first_byte``, ``idle``, ``lifetime``, ``parked``)."""
        with self._lock:
            return dict(self._exceeded)


@final
@attrs.frozen
class RetryImmediately:
    """An accept-error policy that ignores the error and polls again at once.

    This is stdlib ``BaseServer`` behaviour: out of descriptors, the serving
    loop spins at 100% CPU until one frees.
    """

    def accept_failed(self, exc: OSError) -> float:
        """Return 0: retry at once."""
        return 0.0

    def accepted(self) -> None:
        """Nothing to reset."""


def _errno_name(exc: OSError) -> str:
    code = exc.errno
    name = errno.errorcode.get(code, str(code)) if code is not None else type(exc).__name__
    return f"{name} ({exc.strerror or exc})"


@final
@attrs.define(eq=False)
class AcceptBackoff:
    """An accept-error policy that never lets the loop spin.

    * Transient errors (``ECONNABORTED``, ``EPROTO``, ``EINTR``, ``EAGAIN``:
      that one connection went away) are skipped silently: retry at once.
    * Any other error (``EMFILE``, ``ENFILE``, ``ENOBUFS``, ``ENOMEM``, ...)
      pauses accepting for *initial* seconds, doubling on each consecutive
      failure up to *maximum*.  The server retries earlier as soon as one of
      its requests finishes and frees a descriptor.
    * Failures are logged at WARNING at most once per *log_interval* seconds,
      with the number of failures suppressed since.

    Args:
        initial: the first pause, in seconds.
        maximum: the longest pause.
        log_interval: seconds between two log records.
        logger: where to log.
        clock: a monotonic clock (injectable for tests).
    """

    initial: float = attrs.field(default=0.005, validator=attrs.validators.gt(0))
    maximum: float = attrs.field(default=0.5, validator=attrs.validators.gt(0))
    log_interval: float = attrs.field(default=10.0, kw_only=True, validator=_check_timeout)
    logger: logging.Logger = attrs.field(default=_logger, kw_only=True)
    clock: Callable[[], float] = attrs.field(default=time.monotonic, kw_only=True)
    _delay: float = attrs.field(init=False, default=0.0)
    _failures: int = attrs.field(init=False, default=0)
    _log: LogLimiter = attrs.field(
        init=False, default=attrs.Factory(lambda self: LogLimiter(self.log_interval), takes_self=True)
    )

    @property
    def delay(self) -> float:
        """The pause the last failure asked for (0 when accepting normally)."""
        return self._delay

    @property
    def failures(self) -> int:
        """Consecutive failures since the last successful accept."""
        return self._failures

    def accept_failed(self, exc: OSError) -> float:
        """Return 0 for a transient error, else the next pause of the schedule."""
        if exc.errno in ACCEPT_TRANSIENT_ERRNOS:
            return 0.0
        self._failures += 1
        self._delay = min(self.initial if self._delay == 0 else self._delay * 2, self.maximum)
        suppressed = self._log.due(self.clock())
        if suppressed is not None:
            more = f" ({suppressed} similar failures not logged)" if suppressed else ""
            self.logger.warning("accept failed: %s; pausing accepts for %.3f s%s", _errno_name(exc), self._delay, more)
        return self._delay

    def accepted(self) -> None:
        """Reset the schedule (and log the recovery)."""
        if self._failures:
            self.logger.warning("accepting again after %d failed attempts", self._failures)
        self._failures = 0
        self._delay = 0.0
