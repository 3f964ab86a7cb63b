# Marks stubs/composable_server as a package so that mypy (mypy_path = stubs)
# finds stubs/composable_server/compat.pyi for `composable_server.compat`.
# It is only consulted when the package itself is not among the checked
# sources; CI always checks `composable_server` together with tests/examples,
# and the wheel ships compat.pyi next to compat.py instead (PEP 561).
from composable_server import *  # noqa: F403
