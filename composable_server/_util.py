"""Helpers shared across modules that touch no socket."""

from __future__ import annotations

from typing import final

__all__ = ("LogLimiter",)


@final
class LogLimiter:
    """Decides whether a rate-limited log record is due: at most one per *interval* seconds.

    Not thread-safe on its own: its owner calls :meth:`due` under the lock
    that guards the counters the record reports.  The owner passes the time,
    from its own (injectable) clock.  A plain class: it is private and built
    at import by several modules, where an attrs class costs ~1M instructions.

    Args:
        interval: the least time between two records, in seconds.
    """

    __slots__ = ("_last", "_skipped", "interval")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: float | None = None
        self._skipped = 0

    def __repr__(self) -> str:
        return f"LogLimiter(interval={self.interval!r}, _last={self._last!r}, _skipped={self._skipped!r})"

    def due(self, now: float) -> int | None:
        """If a record is due at *now*: how many were skipped since the last one; else None (and count it)."""
        if self._last is not None and now - self._last < self.interval:
            self._skipped += 1
            return None
        skipped, self._skipped, self._last = self._skipped, 0, now
        return skipped
