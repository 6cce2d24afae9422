# SPDX-License-Identifier: Apache-2.0
"""Differential tests against Trustee's own policy files (optional).

Trustee's Rego is not vendored here. Point ``KBS_TEST_TRUSTEE_DIR`` at a checkout (or an
export) of confidential-containers/trustee and these tests

* parse every ``.rego`` file in it with our engine, and
* evaluate Trustee's default CPU/GPU attestation policies and KBS sample policies next to
  ours on the same inputs, and require identical results (trust vector, status,
  extensions, release decision), except where we deviate on purpose.

Without the variable they are skipped.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
from policy_testdata import (
    AZ_SNP,
    AZ_SNP_REFERENCE_VALUES,
    AZ_TDX,
    MR_TD,
    NVIDIA,
    NVIDIA_REFERENCE_VALUES,
    RESOURCE_DATA,
    SAMPLE_REFERENCE_VALUES,
    SNP_CLAIMS,
    SNP_REFERENCE_VALUES,
    TDX_REFERENCE_VALUES,
    XFAM,
    appraisal_claims,
    sample_evidence,
    tdx_evidence,
    token_claims,
    with_agent_policy,
)

from policy import DEFAULT_ATTESTATION_POLICIES, SAMPLE_RESOURCE_POLICIES, RegoEngine

_TRUSTEE_DIR = os.environ.get("KBS_TEST_TRUSTEE_DIR", "")
pytestmark = pytest.mark.skipif(
    not _TRUSTEE_DIR, reason="KBS_TEST_TRUSTEE_DIR (a trustee checkout) is not set"
)
TRUSTEE = Path(_TRUSTEE_DIR)
EAR_POLICIES = TRUSTEE / "attestation-service" / "src" / "ear_token"
KBS_SAMPLES = TRUSTEE / "kbs" / "sample_policies"


def _trustee(path: Path) -> str:
    if not path.is_file():
        pytest.fail(f"{path} not found in KBS_TEST_TRUSTEE_DIR")
    return path.read_text(encoding="utf-8")


def _tdx(**changes: Any) -> dict[str, Any]:
    evidence = tdx_evidence()
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = evidence["tdx"]
        for key in parents:
            node = node[key]
        node[leaf] = value
    return evidence


_CONTAINERS = [
    {"OCI": {"Annotations": {"io.kubernetes.cri.image-name": "pause:3.9"}}},
    {
        "OCI": {
            "Annotations": {"io.kubernetes.cri.image-name": "app:1"},
            "Process": {"User": {"UID": 1000}},
        }
    },
]
_NO_KERNEL_EVENTS = _tdx(uefi_event_logs=[])
_SAMPLE_DEBUG = sample_evidence()
_SAMPLE_DEBUG["sample"]["debug"] = True
_AZ_SNP_CHANGED = copy.deepcopy(AZ_SNP)
_AZ_SNP_CHANGED["tpm"]["pcr11"] = "00" * 32
_TPM = {"pcr11": "9e" * 32, "ak_public": "ak"}

CPU_CASES: list[Any] = [
    pytest.param({}, {}, id="empty"),
    pytest.param(tdx_evidence(), TDX_REFERENCE_VALUES, id="tdx-good"),
    pytest.param(tdx_evidence(), {}, id="tdx-no-rvs"),
    pytest.param(_tdx(tcb_status="OutOfDate"), TDX_REFERENCE_VALUES, id="tdx-outofdate"),
    pytest.param(_tdx(collateral_expiration_status="1"), TDX_REFERENCE_VALUES, id="tdx-expired"),
    pytest.param(_tdx(td_attributes__debug=True), TDX_REFERENCE_VALUES, id="tdx-debug"),
    pytest.param(_tdx(quote__body__rtmr_1="ff" * 48), TDX_REFERENCE_VALUES, id="tdx-rtmr1"),
    pytest.param(_tdx(quote__body__xfam="ff" * 8), TDX_REFERENCE_VALUES, id="tdx-xfam"),
    pytest.param(_tdx(quote__header__tee_type="0"), TDX_REFERENCE_VALUES, id="tdx-sgx"),
    pytest.param(_NO_KERNEL_EVENTS, TDX_REFERENCE_VALUES, id="tdx-grub"),
    pytest.param(
        tdx_evidence(), {**TDX_REFERENCE_VALUES, "tdvfkernel": "00"}, id="tdx-other-kernel"
    ),
    pytest.param(
        with_agent_policy(tdx_evidence(), _CONTAINERS), TDX_REFERENCE_VALUES, id="tdx-agent"
    ),
    pytest.param(sample_evidence(), SAMPLE_REFERENCE_VALUES, id="sample-good"),
    pytest.param(sample_evidence(), {}, id="sample-no-rvs"),
    pytest.param(_SAMPLE_DEBUG, SAMPLE_REFERENCE_VALUES, id="sample-debug"),
    pytest.param(
        sample_evidence(),
        {**SAMPLE_REFERENCE_VALUES, "minimum_minor_version": None},
        id="sample-no-minimum",
    ),
    pytest.param({"snp": SNP_CLAIMS}, SNP_REFERENCE_VALUES, id="snp-good"),
    pytest.param(
        {"snp": SNP_CLAIMS}, {**SNP_REFERENCE_VALUES, "snp_smt_enabled": False}, id="snp-safe"
    ),
    pytest.param(
        {"snp": {**SNP_CLAIMS, "policy_debug_allowed": True}}, SNP_REFERENCE_VALUES, id="snp-dbg"
    ),
    pytest.param({"az-snp-vtpm": AZ_SNP}, AZ_SNP_REFERENCE_VALUES, id="az-snp-good"),
    pytest.param({"az-snp-vtpm": _AZ_SNP_CHANGED}, AZ_SNP_REFERENCE_VALUES, id="az-snp-bad"),
    pytest.param(
        {"az-tdx-vtpm": AZ_TDX},
        {"mr_td": [MR_TD], "xfam": [XFAM], "tdx_pcr11": ["8d" * 32]},
        id="az-tdx-good",
    ),
    pytest.param({"az-tdx-vtpm": AZ_TDX}, {}, id="az-tdx-no-rvs"),
    pytest.param({"tpm": _TPM}, {"tpm_pcr11": ["9e" * 32], "trusted_aks": ["ak"]}, id="tpm"),
    pytest.param({"tpm": _TPM}, {}, id="tpm-no-rvs"),
    pytest.param({"se": {"version": 1}}, {}, id="se"),
]

GPU_CASES: list[Any] = [
    pytest.param({}, {}, id="empty"),
    pytest.param({"nvidia": NVIDIA}, NVIDIA_REFERENCE_VALUES, id="nvidia-good"),
    pytest.param({"nvidia": NVIDIA}, {}, id="nvidia-no-versions"),
    pytest.param({"nvidia": {**NVIDIA, "dbgstat": "enabled"}}, {}, id="nvidia-debug"),
    pytest.param({"nvidia": {**NVIDIA, "measres": "fail"}}, {}, id="nvidia-measres"),
    pytest.param({"nvidia": {**NVIDIA, "x-nvidia-gpu-arch-check": False}}, {}, id="nvidia-arch"),
    pytest.param({"sampledevice": {"svn": "2"}}, {}, id="sampledevice-no-rvs"),
]


def _same_appraisal(theirs_text: str, ours_text: str, evidence: Any, rvs: Any) -> None:
    engine = RegoEngine()
    theirs = engine.appraise(theirs_text, input_=evidence, reference_values=rvs)
    ours = engine.appraise(ours_text, input_=evidence, reference_values=rvs)
    assert ours.trust_vector == theirs.trust_vector
    assert ours.status == theirs.status
    assert ours.extensions == theirs.extensions


@pytest.mark.parametrize(("evidence", "reference_values"), CPU_CASES)
def test_default_cpu_matches_trustee(evidence, reference_values):
    theirs = _trustee(EAR_POLICIES / "ear_default_policy_cpu.rego")
    _same_appraisal(theirs, DEFAULT_ATTESTATION_POLICIES["default_cpu"], evidence, reference_values)


@pytest.mark.parametrize(("evidence", "reference_values"), GPU_CASES)
def test_default_gpu_matches_trustee(evidence, reference_values):
    theirs = _trustee(EAR_POLICIES / "ear_default_policy_gpu.rego")
    _same_appraisal(theirs, DEFAULT_ATTESTATION_POLICIES["default_gpu"], evidence, reference_values)


def test_default_gpu_sampledevice_deliberately_differs():
    # Trustee reads data.reference.device_svn, which its AS never loads: the sample
    # device can never be recognized there. Ours asks query_reference_value.
    engine = RegoEngine()
    evidence = {"sampledevice": {"svn": "2"}}
    rvs = {"device_svn": ["2"]}
    theirs = engine.appraise(
        _trustee(EAR_POLICIES / "ear_default_policy_gpu.rego"),
        input_=evidence,
        reference_values=rvs,
    )
    ours = engine.appraise(
        DEFAULT_ATTESTATION_POLICIES["default_gpu"], input_=evidence, reference_values=rvs
    )
    assert theirs.trust_vector["hardware"] == 97
    assert ours.trust_vector["hardware"] == 2


_SUBMODS = [
    {"cpu0": appraisal_claims("affirming")},
    {"cpu0": appraisal_claims("affirming"), "gpu0": appraisal_claims("affirming")},
    {"cpu0": appraisal_claims("affirming"), "gpu0": appraisal_claims("warning")},
    {"cpu0": appraisal_claims("warning")},
    {"cpu0": appraisal_claims("contraindicated", tee="sample")},
    {"cpu0": appraisal_claims("affirming", tee="sample")},
    {},
]
_PLUGINS = ["resource", "other"]


@pytest.mark.parametrize(
    ("trustee_file", "ours"),
    [
        ("affirming.rego", "affirming"),
        ("allow_all.rego", "allow_all"),
        ("deny_all.rego", "deny_all"),
    ],
)
def test_resource_samples_match_trustee(trustee_file, ours):
    engine = RegoEngine()
    theirs_text = _trustee(KBS_SAMPLES / trustee_file)
    ours_text = SAMPLE_RESOURCE_POLICIES[ours]
    for submods in _SUBMODS:
        for plugin in _PLUGINS:
            claims = token_claims(**submods)
            data = {**RESOURCE_DATA, "plugin": plugin}
            theirs = engine.allow(theirs_text, input_=claims, data=data)
            mine = engine.allow(ours_text, input_=claims, data=data)
            assert mine.allowed is theirs.allowed, (trustee_file, submods, plugin)


def test_every_trustee_rego_file_parses():
    files = sorted(TRUSTEE.rglob("*.rego"))
    assert files
    engine = RegoEngine()
    for path in files:
        engine.validate(path.read_text(encoding="utf-8"))
