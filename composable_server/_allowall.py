"""The default verifier, apart from :mod:`composable_server.verifiers` (which
re-exports it): every server without a verifier gets one, and the verifiers
module (address parsing, ``ipaddress``, a dozen classes) loads only for a
server that has one."""

from __future__ import annotations

from typing import final

import attrs


__all__ = ("AllowAll",)


@final
@attrs.frozen
class AllowAll:
    """A verifier that admits every request."""

    def verify(self, request: object, client_address: object) -> bool:
        """Return True."""
        return True
