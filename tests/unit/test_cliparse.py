"""composable_server._cliparse: the command line's parser, which imports none of the engine.

It repeats a few defaults and choices of other modules so that ``--help``
can print them without importing those modules; these tests keep the
copies equal to the originals.  (What the parser imports is checked in
test_import_cost.py; the options' behaviour in integration/test_cli.py.)
"""

from __future__ import annotations

import argparse
import shutil
from typing import get_args

import pytest

from composable_server import _cliparse, _modes, _services, policies, prefork, proxy
from composable_server._classes import TransportName

pytestmark = pytest.mark.timeout(10)


class TestCopiedDefaults:
    def test_max_line_is_the_services_limit(self) -> None:
        """MAX_LINE is _services.MAX_LINE, the limit the line services apply."""
        assert _cliparse.MAX_LINE == _services.MAX_LINE

    def test_idle_timeout_is_the_default_budget(self) -> None:
        """DEFAULT_IDLE_TIMEOUT is the idle limit of policies.DEFAULT_BUDGET."""
        assert _cliparse.DEFAULT_IDLE_TIMEOUT == policies.DEFAULT_BUDGET.idle

    def test_workers_and_handover_name_are_prefork_s(self) -> None:
        """DEFAULT_WORKERS and HANDOVER_FDNAME are prefork's."""
        assert _cliparse.DEFAULT_WORKERS == prefork.DEFAULT_WORKERS
        assert _cliparse.HANDOVER_FDNAME == prefork.HANDOVER_FDNAME

    def test_proxy_modes_and_trusted_networks_are_proxy_s(self) -> None:
        """PROXY_MODES are the values of proxy.ProxyMode, and DEFAULT_TRUSTED is proxy's."""
        assert _cliparse.PROXY_MODES == get_args(proxy.ProxyMode)
        assert _cliparse.DEFAULT_TRUSTED == proxy.DEFAULT_TRUSTED


class TestChoices:
    def test_every_dispatch_mode_has_a_dispatcher(self) -> None:
        """--dispatch offers the modes of _modes.DISPATCHERS, in order, and prefork."""
        assert _cliparse.DISPATCH_MODES == (*_modes.DISPATCHERS, "prefork")

    def test_every_transport_names_a_factory_transport(self) -> None:
        """Each --transport maps to a transport of the factories' table; the stream and unix sets follow from it."""
        assert set(_cliparse.TRANSPORTS.values()) == set(get_args(TransportName))
        assert _cliparse.STREAM_TRANSPORTS == {"tcp", "unix"}
        assert _cliparse.UNIX_TRANSPORTS == {"unix", "unix-datagram", "unix-dgram"}

    def test_the_parser_offers_the_choices(self) -> None:
        """build_parser() parses every --transport and --dispatch choice."""
        parser = _cliparse.build_parser()
        for transport in _cliparse.TRANSPORTS:
            assert parser.parse_args(["serve", "--transport", transport]).transport == transport
        for mode in _cliparse.DISPATCH_MODES:
            assert parser.parse_args(["serve", "--dispatch", mode]).dispatch == mode


def _helps(parser: argparse.ArgumentParser) -> list[str]:
    """The help of *parser* and of each of its subcommands."""
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [parser.format_help(), *(sub.format_help() for sub in commands.choices.values())]


class TestHelpWidth:
    @pytest.mark.parametrize("columns", [None, "50", "200", "0", "-3", "wide"])
    def test_the_width_is_shutil_s(self, monkeypatch: pytest.MonkeyPatch, columns: str | None) -> None:
        """_terminal_columns() is shutil.get_terminal_size().columns, with $COLUMNS unset, good or bad."""
        if columns is None:
            monkeypatch.delenv("COLUMNS", raising=False)
        else:
            monkeypatch.setenv("COLUMNS", columns)
        assert _cliparse._terminal_columns() == shutil.get_terminal_size().columns

    def test_the_help_is_argparse_s(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Every help text is the one argparse's own formatters print (which import shutil for the width), at any width."""
        ours, stock = [], []
        for columns in ("60", "100"):
            monkeypatch.setenv("COLUMNS", columns)
            with monkeypatch.context() as patch:
                ours.append(_helps(_cliparse.build_parser()))
                patch.setattr(_cliparse, "_Formatter", argparse.HelpFormatter)
                patch.setattr(_cliparse, "_RawDescriptionFormatter", argparse.RawDescriptionHelpFormatter)
                stock.append(_helps(_cliparse.build_parser()))
        assert ours == stock
        assert ours[0] != ours[1]  # the width applied


class TestCheckUsage:
    def test_fills_in_the_default_transport(self) -> None:
        """check_usage() sets --transport tcp when none is given, and no inherited socket."""
        parser = _cliparse.build_parser()
        args = parser.parse_args(["serve", "--port", "0"])
        _cliparse.check_usage(parser, args)
        assert (args.transport, args.inherited) == ("tcp", None)

    def test_refuses_an_option_of_another_mode_with_status_2(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--threads without a pool is refused with one line and exit status 2."""
        parser = _cliparse.build_parser()
        args = parser.parse_args(["serve", "--threads", "4"])
        with pytest.raises(SystemExit) as info:
            _cliparse.check_usage(parser, args)
        assert info.value.code == 2
        assert capsys.readouterr().err.strip().endswith(
            "error: --threads applies only to --dispatch pool and prefork (see --help)"
        )
