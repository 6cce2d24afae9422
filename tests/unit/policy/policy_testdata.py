# SPDX-License-Identifier: Apache-2.0
"""Test inputs for the policy tests: annotated evidence and token claims shaped like Trustee's.

The evidence builders return what the attestation service hands an appraisal policy:
the verifier's claims under the TEE name plus the lifted ``report_data``,
``runtime_data_claims``, ``init_data`` and ``init_data_claims`` members.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
ASSETS = ROOT / "tests" / "assets" / "policy"

# Reference measurements of the TD in the TDX scenarios (made-up, right lengths).
MR_TD = "a1" * 48
RTMR_1 = "b2" * 48
RTMR_2 = "c3" * 48
XFAM = "e702060000000000"
TDVF_KERNEL = "d4" * 48
TDVF_KERNEL_PARAMS = "e5" * 48
INTEL_QE_VENDOR_ID = "939a7233f79c4ca9940a0db3957f0607"

TDX_REFERENCE_VALUES: dict[str, Any] = {
    "mr_td": [MR_TD],
    "rtmr_1": [RTMR_1],
    "rtmr_2": [RTMR_2],
    "xfam": [XFAM],
    "tdvfkernel": TDVF_KERNEL,
    "tdvfkernelparams": TDVF_KERNEL_PARAMS,
}

SAMPLE_REFERENCE_VALUES: dict[str, Any] = {
    "launch_digest": ["abcde"],
    "svn": ["1"],
    "major_version": 1,
    "minimum_minor_version": 1,
}


def _runtime_and_init_data() -> dict[str, Any]:
    return {
        "report_data": "5f" * 64,
        "runtime_data_claims": {
            "nonce": "q0f1Ui9mBQv4TkfbA0U3c6LmoTGGS8LMMBXDRZLdhrE=",
            "tee-pubkey": {
                "kty": "EC",
                "crv": "P-256",
                "alg": "ECDH-ES+A256KW",
                "x": "x",
                "y": "y",
            },
        },
        "init_data": "00" * 48,
        "init_data_claims": None,
    }


def tdx_evidence() -> dict[str, Any]:
    """A good TDX guest booted by TDVF with direct kernel boot, platform up to date."""
    body = {
        "tcb_svn": "03000500000000000000000000000000",
        "mr_seam": "2f" * 48,
        "mrsigner_seam": "00" * 48,
        "seam_attributes": "0000000000000000",
        "td_attributes": "0000001000000000",
        "xfam": XFAM,
        "mr_td": MR_TD,
        "mr_config_id": "00" * 48,
        "mr_owner": "00" * 48,
        "mr_owner_config": "00" * 48,
        "rtmr_0": "e9" * 48,
        "rtmr_1": RTMR_1,
        "rtmr_2": RTMR_2,
        "rtmr_3": "00" * 48,
        "report_data": "5f" * 64,
    }
    header = {
        "version": "0400",
        "att_key_type": "0200",
        "tee_type": "81000000",
        "reserved": "00000000",
        "vendor_id": INTEL_QE_VENDOR_ID,
        "user_data": "d099bfec0a477aa85a605dceabf2b10800000000",
    }
    events = [
        {
            "index": 1,
            "type_name": "EV_SEPARATOR",
            "digests": [{"alg": "SHA-384", "digest": "39" * 48}],
            "event": "AAAAAA==",
            "details": {},
            "digest_matches_event": True,
        },
        {
            "index": 2,
            "type_name": "EV_EFI_BOOT_SERVICES_APPLICATION",
            "digests": [{"alg": "SHA-384", "digest": TDVF_KERNEL}],
            "event": "",
            "details": {
                "device_paths": [
                    "VenMedia(1428F772-B64A-441E-B8C3-9EBDD7F893C7,)",
                    "File(kernel)",
                ]
            },
            "digest_matches_event": False,
        },
        {
            "index": 3,
            "type_name": "EV_EVENT_TAG",
            "digests": [{"alg": "SHA-384", "digest": TDVF_KERNEL_PARAMS}],
            "event": "",
            "details": {"string": "LOADED_IMAGE::LoadOptions"},
            "digest_matches_event": False,
        },
    ]
    tdx = {
        "quote": {"header": header, "body": body},
        "td_attributes": {
            "debug": False,
            "septve_disable": True,
            "protection_keys": False,
            "key_locker": False,
            "perfmon": False,
        },
        "uefi_event_logs": events,
        "tcb_status": "UpToDate",
        "collateral_expiration_status": "0",
        "advisory_ids": [],
        "tcb_date": "2025-08-13T00:00:00Z",
    }
    return {"tdx": tdx, **_runtime_and_init_data()}


def sample_evidence() -> dict[str, Any]:
    """What the sample verifier produces."""
    sample = {
        "svn": "1",
        "launch_digest": "abcde",
        "platform_version": {"major": 1, "minor": 4},
        "debug": False,
    }
    return {"sample": sample, **_runtime_and_init_data()}


def with_agent_policy(evidence: dict[str, Any], containers: list[dict[str, Any]]) -> dict[str, Any]:
    """Add init-data claims carrying a Kata agent policy's container list."""
    evidence = copy.deepcopy(evidence)
    evidence["init_data_claims"] = {
        "aa.toml": {"token_configs": {}},
        "agent_policy_claims": {"containers": containers},
    }
    return evidence


def token_claims(**submods: dict[str, Any]) -> dict[str, Any]:
    """EAR token claims as the KBS hands them to a resource policy."""
    return {
        "eat_profile": "tag:github.com,2024:confidential-containers/Trustee",
        "iat": 1760426134,
        "exp": 1760426434,
        "iss": "CoCo-Attestation-Service",
        "ear.verifier-id": {"developer": "https://confidentialcontainers.org", "build": "test"},
        "submods": submods,
    }


def appraisal_claims(status: str, tee: str = "tdx") -> dict[str, Any]:
    return {
        "ear.status": status,
        "ear.trustworthiness-vector": {"hardware": 2},
        "ear.appraisal-policy-id": "default",
        "ear.veraison.annotated-evidence": {tee: {"svn": "1"}},
    }


RESOURCE_DATA: dict[str, Any] = {
    "plugin": "resource",
    "resource-path": ["default", "key", "1"],
    "query": {},
}


# Other CPU TEEs and GPUs: claim sets shaped like the Trustee verifiers' output.

SNP_CLAIMS: dict[str, Any] = {
    "measurement": "5a" * 48,
    "reported_tcb_bootloader": 9,
    "reported_tcb_microcode": 72,
    "reported_tcb_snp": 21,
    "reported_tcb_tee": 0,
    "policy_debug_allowed": False,
    "policy_migrate_ma": False,
    "platform_smt_enabled": True,
    "platform_tsme_enabled": False,
    "policy_abi_major": 0,
    "policy_abi_minor": 0,
    "policy_single_socket": False,
    "policy_smt_allowed": True,
}
SNP_REFERENCE_VALUES: dict[str, Any] = {
    "snp_launch_measurement": ["5a" * 48],
    "snp_bootloader": [9],
    "snp_microcode": [72],
    "snp_snp_svn": [21],
    "snp_tee_svn": [0],
    "snp_smt_enabled": True,
    "snp_tsme_enabled": False,
    "snp_guest_abi_major": 0,
    "snp_guest_abi_minor": 0,
    "snp_single_socket": False,
    "snp_smt_allowed": True,
}


AZ_SNP: dict[str, Any] = {
    "measurement": "6b" * 48,
    "tpm": {"pcr11": "7c" * 32},
    "reported_tcb_bootloader": 3,
    "reported_tcb_microcode": 209,
    "reported_tcb_snp": 20,
    "reported_tcb_tee": 0,
    "platform_smt_enabled": True,
    "platform_tsme_enabled": True,
    "policy_abi_major": 0,
    "policy_abi_minor": 31,
    "policy_single_socket": False,
    "policy_smt_allowed": True,
}
AZ_SNP_REFERENCE_VALUES: dict[str, Any] = {
    "measurement": ["6b" * 48],
    "snp_pcr11": ["7c" * 32],
    "tcb_bootloader": [3],
    "tcb_microcode": [209],
    "tcb_snp": [20],
    "tcb_tee": [0],
    "smt_enabled": [True],
    "tsme_enabled": [True],
    "abi_major": [0],
    "abi_minor": [31],
    "single_socket": [False],
    "smt_allowed": [True],
}


AZ_TDX: dict[str, Any] = {
    "quote": {
        "header": {"tee_type": "81000000", "vendor_id": INTEL_QE_VENDOR_ID},
        "body": {"mr_td": MR_TD, "xfam": XFAM},
    },
    "tpm": {"pcr11": "8d" * 32},
    "tcb_status": "UpToDate",
}


NVIDIA: dict[str, Any] = {
    "x-nvidia-gpu-attestation-report-cert-chain": {
        "x-nvidia-cert-status": "valid",
        "x-nvidia-cert-ocsp-status": "good",
    },
    "x-nvidia-gpu-attestation-report-cert-chain-fwid-match": True,
    "x-nvidia-gpu-attestation-report-parsed": True,
    "x-nvidia-gpu-attestation-report-signature-verified": True,
    "x-nvidia-gpu-arch-check": True,
    "secboot": True,
    "dbgstat": "disabled",
    "x-nvidia-gpu-vbios-version": "96.00.9F.00.01",
    "x-nvidia-gpu-driver-version": "550.90.07",
    "x-nvidia-gpu-vbios-rim-cert-chain": {
        "x-nvidia-cert-status": "valid",
        "x-nvidia-cert-ocsp-status": "good",
    },
    **{
        f"x-nvidia-gpu-{component}-rim-{check}": True
        for component in ("driver", "vbios")
        for check in (
            "fetched",
            "measurements-available",
            "schema-validated",
            "signature-verified",
            "version-match",
        )
    },
    "measres": "success",
}
NVIDIA_REFERENCE_VALUES = {
    "allowed_vbios_versions": ["96.00.9F.00.01"],
    "allowed_driver_versions": ["550.90.07"],
}
