"""``python -m composable_server`` and the ``composable-server`` console script.

See ``python -m composable_server --help``; the logic is in
:mod:`composable_server._cli`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ._cli import main as _main

__all__ = ("main",)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with *argv* (default: ``sys.argv[1:]``); return the exit status."""
    return _main(argv)


if __name__ == "__main__":
    sys.exit(main())
