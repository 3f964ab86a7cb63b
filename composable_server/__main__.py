"""``python -m composable_server`` and the ``composable-server`` console script.

See ``python -m composable_server --help``.  The options are parsed and
checked by :mod:`composable_server._cliparse`, which loads argparse and none
of the engine, so ``--help``, ``--version`` and a usage error cost little
(issue 18); the server is assembled and run by :mod:`composable_server._cli`,
imported only once the arguments are good.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ._cliparse import build_parser, check_usage

__all__ = ("main",)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with *argv* (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        check_usage(parser, args)
        from ._cli import _serve

        return _serve(parser, args)
    if args.command == "demo":
        from ._demo import run_demo

        return run_demo(requests=args.requests, timeout=args.timeout)
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
