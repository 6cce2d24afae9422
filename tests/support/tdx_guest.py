# SPDX-License-Identifier: Apache-2.0
"""A TDX guest and a KBS configured for it, on the private test PKI and a loopback fake PCCS.

* :class:`PkiAttester`: a ``KbsClient`` attester whose quotes come from a :class:`TestPki`
  (bound to whatever REPORT_DATA the client asks for), with knobs for the negative cases
  (a mutated quote, a wrong REPORT_DATA or MRCONFIGID, a debug TD, a tampered event log).
* :func:`tdx_settings`: KBS settings whose TDX verifier trusts the test root (through the
  ``insecure_root_ca_path`` setting) and fetches collateral from the given PCCS URLs.
* :func:`tdx_reference_values`: what makes a :class:`PkiAttester` guest ``affirming`` under
  the default CPU policy.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import Certificate

from attestation.tdx.eventlog import parse_event_log
from kbs.settings import KbsSettings
from support.kbs_app import AdminKey, settings_for
from support.tdx_pki import SEPT_VE_DISABLE, TestPki

#: The MRTD and XFAM every test PKI quote carries (see TestPki.quote).
MR_TD = b"\x42" * 48
XFAM = "e702060000000000"

#: An init-data document as Trustee's guest components send it (sha384 fills MRCONFIGID).
INIT_DATA_TOML = """version = "0.1.0"
algorithm = "sha384"

[data]
"aa.toml" = '''
[token_configs.kbs]
url = "http://kbs"
'''
"""
INIT_DATA_DIGEST = hashlib.sha384(INIT_DATA_TOML.encode()).digest()


def ccel(shared_dir: Path, name: str = "CCEL_data") -> tuple[bytes, tuple[bytes, ...]]:
    """A real CC event log from the shared test data and the RTMRs it replays to."""
    raw = (shared_dir / "testdata/trustee" / name).read_bytes()
    log = parse_event_log(raw)
    return raw, tuple(log.replay(i) for i in range(1, 5))


def flip_bit(data: bytes, offset: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[offset] ^= 1 << bit
    return bytes(out)


@dataclass
class PkiAttester:
    """``tee = "tdx"`` evidence from the test PKI, bound to the client's REPORT_DATA."""

    pki: TestPki
    eventlog: bytes | None = None
    rtmrs: Sequence[bytes] = (bytes(48),) * 4
    mr_config_id: bytes = bytes(48)
    td_attributes: int = SEPT_VE_DISABLE
    leaf: tuple[ec.EllipticCurvePrivateKey, Certificate] | None = None
    report_data: bytes | None = None  # None: the REPORT_DATA the client computed
    mutate: Callable[[bytes], bytes] | None = None
    quote_kwargs: dict[str, Any] = field(default_factory=dict)
    seen_report_data: list[bytes] = field(default_factory=list)

    tee = "tdx"

    async def evidence(self, report_data: bytes) -> Any:
        self.seen_report_data.append(report_data)
        bound = self.report_data if self.report_data is not None else report_data
        quote = self.pki.quote(
            report_data=bound.ljust(64, b"\x00"),
            mr_config_id=self.mr_config_id,
            rtmrs=self.rtmrs,
            td_attributes=self.td_attributes,
            leaf=self.leaf,
            **self.quote_kwargs,
        )
        if self.mutate is not None:
            quote = self.mutate(quote)
        return {
            "quote": base64.b64encode(quote).decode(),
            "cc_eventlog": None
            if self.eventlog is None
            else base64.b64encode(self.eventlog).decode(),
        }

    def but(self, **changes: Any) -> PkiAttester:
        """A copy with some knobs changed."""
        return replace(self, seen_report_data=[], **changes)


def tdx_settings(
    tmp_path: Path,
    admin_key: AdminKey | None,
    pki: TestPki,
    pccs_urls: Sequence[str],
    *,
    database_url: str | None = None,
    dcap: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> KbsSettings:
    """Settings for an in-process KBS that verifies test PKI quotes against ``pccs_urls``."""
    root = tmp_path / "test-root-ca.der"
    root.write_bytes(pki.root_der)
    section: dict[str, Any] = {
        "collateral_services": list(pccs_urls),
        "insecure_root_ca_path": str(root),
        "timeout_s": 5.0,
        "connect_timeout_s": 2.0,
        **(dcap or {}),
    }
    merged: dict[str, Any] = {
        "attestation_service": {"verifier_config": {"dcap_verifier": section}},
        **(overrides or {}),
    }
    return settings_for(tmp_path, admin_key, database_url=database_url, overrides=merged)


def tdx_reference_values(rtmrs: Sequence[bytes]) -> dict[str, Any]:
    """Reference values for the default CPU policy: MRTD, RTMR1, RTMR2, XFAM."""
    return {
        "mr_td": [MR_TD.hex()],
        "rtmr_1": [rtmrs[1].hex()],
        "rtmr_2": [rtmrs[2].hex()],
        "xfam": [XFAM],
    }
