# SPDX-License-Identifier: Apache-2.0
"""Which verifier handles which TEE.

An explicit mapping built by the application at start-up from its settings; nothing is
discovered through entry points or imported by dotted path from configuration.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from attestation.base import Verifier
from attestation.errors import UnsupportedTeeError

_logger = logging.getLogger(__name__)

__all__ = ["VerifierRegistry"]


class VerifierRegistry:
    """An immutable TEE-name -> verifier table."""

    def __init__(self, verifiers: Iterable[Verifier]) -> None:
        """Register ``verifiers`` under their ``tee`` names (each name at most once)."""
        table: dict[str, Verifier] = {}
        for verifier in verifiers:
            if verifier.tee in table:
                raise ValueError(f"two verifiers registered for tee {verifier.tee!r}")
            table[verifier.tee] = verifier
        self._table: Mapping[str, Verifier] = table

    def get(self, tee: str) -> Verifier:
        """Return the verifier for ``tee``.

        Raises:
            UnsupportedTeeError: no verifier is enabled for ``tee``.
        """
        try:
            return self._table[tee]
        except KeyError:
            raise UnsupportedTeeError(f"tee {tee!r} is not enabled on this server") from None

    def __contains__(self, tee: object) -> bool:
        """Whether a verifier is enabled for ``tee``."""
        return tee in self._table

    @property
    def tees(self) -> tuple[str, ...]:
        """The enabled TEE names, sorted."""
        return tuple(sorted(self._table))
