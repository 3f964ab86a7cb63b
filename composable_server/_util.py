"""Helpers shared across modules that touch no socket."""

from __future__ import annotations

from typing import final

import attrs

__all__ = ("LogLimiter",)


@final
@attrs.define(eq=False)
class LogLimiter:
    """Decides whether a rate-limited log record is due: at most one per *interval* seconds.

    Not thread-safe on its own: its owner calls :meth:`due` under the lock
    that guards the counters the record reports.  The owner passes the time,
    from its own (injectable) clock.

    Args:
        interval: the least time between two records, in seconds.
    """

    interval: float
    _last: float | None = attrs.field(init=False, default=None)
    _skipped: int = attrs.field(init=False, default=0)

    def due(self, now: float) -> int | None:
        """If a record is due at *now*: how many were skipped since the last one; else None (and count it)."""
        if self._last is not None and now - self._last < self.interval:
            self._skipped += 1
            return None
        skipped, self._skipped, self._last = self._skipped, 0, now
        return skipped
