# SPDX-License-Identifier: Apache-2.0
"""Test hooks for TDX verification: hold ``check_evidence`` until the test releases it.

:func:`held_check_evidence` wraps the verifier's steps 4-7 so that each call writes
``started`` (holding the process id) into a directory, waits until a ``release`` file
appears there (or a timeout passes), runs the real checks and writes ``finished``.
Installed in the server process (inline verification) with ``monkeypatch``, or in every
verification worker process through :func:`install_hold`, a ``VerificationPool``
initializer (it pickles by reference: ``support`` is on the workers' ``sys.path``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attestation.tdx.verifier as verifier_module

#: Environment override of ``[attestation_service.verifier_config.dcap_verifier]
#: verify_processes`` (inherited by ``kbs serve`` processes the tests start).
VERIFY_PROCESSES_ENV = "KBS_ATTESTATION_SERVICE__VERIFIER_CONFIG__DCAP_VERIFIER__VERIFY_PROCESSES"
#: How long a held verification waits for ``release`` at most.
HOLD_TIMEOUT_S = 30.0
_POLL_S = 0.005


def held_check_evidence(
    directory: str | Path, *, timeout_s: float = HOLD_TIMEOUT_S
) -> Callable[..., Any]:
    """``check_evidence`` that announces itself and waits for ``directory/release``."""
    real = verifier_module.check_evidence
    where = Path(directory)

    def held(*args: Any, **kwargs: Any) -> Any:
        (where / "started").write_text(str(os.getpid()))
        deadline = time.monotonic() + timeout_s
        while not (where / "release").exists() and time.monotonic() < deadline:
            time.sleep(_POLL_S)
        try:
            return real(*args, **kwargs)
        finally:
            (where / "finished").write_text(str(os.getpid()))

    return held


def install_hold(directory: str, timeout_s: float = HOLD_TIMEOUT_S) -> None:
    """``VerificationPool`` initializer: hold every verification in this worker process."""
    verifier_module.check_evidence = held_check_evidence(directory, timeout_s=timeout_s)  # type: ignore[assignment]
