"""composable_server._util: the log limiter shared by acceptors, verifiers and policies."""

from __future__ import annotations

import pytest

from composable_server._util import LogLimiter

pytestmark = pytest.mark.timeout(5)


class TestLogLimiter:
    def test_first_record_is_due_with_nothing_skipped(self) -> None:
        """The first call is due at once and reports no skipped records."""
        assert LogLimiter(10.0).due(100.0) == 0

    def test_counts_what_it_holds_back_until_the_interval_passes(self) -> None:
        """Within the interval nothing is due; the next due record reports how many were held back."""
        limiter = LogLimiter(10.0)
        limiter.due(0.0)
        assert [limiter.due(t) for t in (1.0, 5.0, 9.9)] == [None, None, None]
        assert limiter.due(10.0) == 3
        assert limiter.due(10.5) is None
        assert limiter.due(25.0) == 1
