# SPDX-License-Identifier: Apache-2.0
"""What the shipped policies decide: default_cpu, default_gpu and the resource policies."""

from __future__ import annotations

import copy
import json
import zipfile
from typing import Any

import pytest
from hatchling.builders.wheel import WheelBuilder
from policy_testdata import (
    AZ_SNP,
    AZ_SNP_REFERENCE_VALUES,
    AZ_TDX,
    MR_TD,
    NVIDIA,
    NVIDIA_REFERENCE_VALUES,
    RESOURCE_DATA,
    ROOT,
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

from policy import (
    DEFAULT_ATTESTATION_POLICIES,
    DEFAULT_RESOURCE_POLICY,
    DEFAULT_RESOURCE_POLICY_ID,
    SAMPLE_RESOURCE_POLICIES,
    Extension,
    policy_hash,
)
from policy.defaults import shipped_policy

CPU = DEFAULT_ATTESTATION_POLICIES["default_cpu"]
GPU = DEFAULT_ATTESTATION_POLICIES["default_gpu"]


def _vector(appraisal) -> tuple[int, int, int]:
    vector = appraisal.trust_vector
    return (vector["executables"], vector["hardware"], vector["configuration"])


def _other_claims_are_zero(appraisal) -> bool:
    others = set(appraisal.trust_vector) - {"executables", "hardware", "configuration"}
    return all(appraisal.trust_vector[name] == 0 for name in others)


# ------------------------------------------------------------------------------ shape


def test_shipped_ids_and_hash():
    assert set(DEFAULT_ATTESTATION_POLICIES) == {"default_cpu", "default_gpu"}
    assert DEFAULT_RESOURCE_POLICY_ID == "resource-policy"
    assert shipped_policy("resource_policy") == DEFAULT_RESOURCE_POLICY
    assert set(SAMPLE_RESOURCE_POLICIES) == {"allow_all", "deny_all", "affirming"}
    digest = policy_hash(CPU)
    assert len(digest) == 96
    assert digest == policy_hash(CPU)
    assert policy_hash("a") != policy_hash("b")


@pytest.mark.parametrize("name", ["", "../engine", "a/b", ".hidden"])
def test_shipped_policy_rejects_paths(name):
    with pytest.raises(ValueError, match="plain file stem"):
        shipped_policy(name)


def test_shipped_policy_missing():
    with pytest.raises(FileNotFoundError):
        shipped_policy("no_such_policy")


# ------------------------------------------------------------------------- default_cpu


def test_cpu_without_evidence_gets_the_defaults(engine):
    appraisal = engine.appraise(CPU, input_={"report_data": "00"}, reference_values={})
    assert _vector(appraisal) == (33, 97, 36)
    assert _other_claims_are_zero(appraisal)
    assert appraisal.status == "contraindicated"
    assert appraisal.policy_hash == policy_hash(CPU)


def test_tdx_good_guest_is_affirming(engine):
    appraisal = engine.appraise(CPU, input_=tdx_evidence(), reference_values=TDX_REFERENCE_VALUES)
    assert _vector(appraisal) == (3, 2, 2)
    assert _other_claims_are_zero(appraisal)
    assert appraisal.status == "affirming"


def test_tdx_without_reference_values_is_contraindicated(engine):
    appraisal = engine.appraise(CPU, input_=tdx_evidence(), reference_values={})
    assert _vector(appraisal) == (33, 97, 36)
    assert appraisal.status == "contraindicated"


def _tdx(mutate) -> dict[str, Any]:
    evidence = tdx_evidence()
    mutate(evidence["tdx"])
    return evidence


def _set(path: str, value: Any):
    def mutate(tdx: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = tdx
        for key in parents:
            node = node[key]
        node[leaf] = value

    return mutate


def _drop_event(type_name: str):
    def mutate(tdx: dict[str, Any]) -> None:
        tdx["uefi_event_logs"] = [
            event for event in tdx["uefi_event_logs"] if event["type_name"] != type_name
        ]

    return mutate


@pytest.mark.parametrize(
    ("mutate", "vector", "status"),
    [
        # Platform TCB not current: hardware is no longer recognized.
        pytest.param(
            _set("tcb_status", "OutOfDate"),
            (3, 97, 2),
            "contraindicated",
            id="tcb-status-outofdate",
        ),
        pytest.param(
            _set("tcb_status", "SWHardeningNeeded"),
            (3, 97, 2),
            "contraindicated",
            id="tcb-status-swhardeningneeded",
        ),
        pytest.param(
            _set("tcb_status", "ConfigurationNeeded"),
            (3, 97, 2),
            "contraindicated",
            id="tcb-status-configurationneeded",
        ),
        pytest.param(
            _set("collateral_expiration_status", "1"),
            (3, 97, 2),
            "contraindicated",
            id="collateral-expiration-status-1",
        ),
        pytest.param(
            _set("quote.header.tee_type", "00000000"),
            (3, 97, 2),
            "contraindicated",
            id="tee-type-00000000",
        ),
        pytest.param(
            _set("quote.header.vendor_id", "00" * 16),
            (3, 97, 2),
            "contraindicated",
            id="vendor-id-00-16",
        ),
        pytest.param(
            _set("quote.body.mr_td", "ff" * 48), (3, 97, 2), "contraindicated", id="mr-td-ff-48"
        ),
        # Debug TD or unexpected CPU features: configuration unavailable.
        pytest.param(_set("td_attributes.debug", True), (3, 2, 36), "warning", id="debug-true"),
        pytest.param(_set("td_attributes.debug", 0), (3, 2, 36), "warning", id="debug-0"),
        pytest.param(_set("quote.body.xfam", "ff" * 8), (3, 2, 36), "warning", id="xfam-ff-8"),
        # Boot chain: RTMR mismatch is unrecognized; missing kernel events fall back to 4.
        pytest.param(
            _set("quote.body.rtmr_1", "ff" * 48), (33, 2, 2), "warning", id="rtmr-1-ff-48"
        ),
        pytest.param(
            _set("quote.body.rtmr_2", "ff" * 48), (33, 2, 2), "warning", id="rtmr-2-ff-48"
        ),
        pytest.param(
            _drop_event("EV_EFI_BOOT_SERVICES_APPLICATION"),
            (4, 2, 2),
            "affirming",
            id="ev-efi-boot-services-application-dropped",
        ),
        pytest.param(
            _drop_event("EV_EVENT_TAG"), (4, 2, 2), "affirming", id="ev-event-tag-dropped"
        ),
        pytest.param(_set("uefi_event_logs", []), (4, 2, 2), "affirming", id="uefi-event-logs"),
    ],
)
def test_tdx_scenarios(engine, mutate, vector, status):
    appraisal = engine.appraise(CPU, input_=_tdx(mutate), reference_values=TDX_REFERENCE_VALUES)
    assert _vector(appraisal) == vector
    assert appraisal.status == status


@pytest.mark.parametrize(
    ("index", "details"),
    [
        pytest.param(1, {"device_paths": ["VenMedia(x)", "File(initrd)"]}, id="not-the-kernel"),
        pytest.param(1, {}, id="no-device-paths"),
        pytest.param(2, {"string": "LOADED_IMAGE::Other"}, id="not-load-options"),
    ],
)
def test_tdx_event_log_checks_path_and_tag(engine, index, details):
    def mutate(tdx: dict[str, Any]) -> None:
        tdx["uefi_event_logs"][index]["details"] = details

    appraisal = engine.appraise(CPU, input_=_tdx(mutate), reference_values=TDX_REFERENCE_VALUES)
    assert _vector(appraisal) == (4, 2, 2)


@pytest.mark.parametrize("kind", ["tdvfkernel", "tdvfkernelparams"])
def test_tdx_event_digest_must_match(engine, kind):
    reference_values = {**TDX_REFERENCE_VALUES, kind: "00" * 48}
    appraisal = engine.appraise(CPU, input_=tdx_evidence(), reference_values=reference_values)
    assert _vector(appraisal) == (4, 2, 2)


def test_tdx_event_type_must_match(engine):
    def mutate(tdx: dict[str, Any]) -> None:
        tdx["uefi_event_logs"][1]["type_name"] = "EV_EFI_BOOT_SERVICES_DRIVER"

    appraisal = engine.appraise(CPU, input_=_tdx(mutate), reference_values=TDX_REFERENCE_VALUES)
    assert _vector(appraisal) == (4, 2, 2)


def test_tdx_reference_values_accept_any_listed_value(engine):
    reference_values = {
        **TDX_REFERENCE_VALUES,
        "mr_td": ["00" * 48, MR_TD],
        "xfam": ["e742060000000000", XFAM],
    }
    appraisal = engine.appraise(CPU, input_=tdx_evidence(), reference_values=reference_values)
    assert appraisal.status == "affirming"


def test_tdx_scalar_reference_value_where_a_list_is_expected_never_matches(engine):
    reference_values = {**TDX_REFERENCE_VALUES, "mr_td": MR_TD}
    appraisal = engine.appraise(CPU, input_=tdx_evidence(), reference_values=reference_values)
    assert appraisal.trust_vector["hardware"] == 97


def test_tdx_with_real_trustee_claims(engine, shared_dir):
    # The claims Trustee's TDX verifier produces for a real quote (a debug TD, booted by
    # td-shim, so no TDVF kernel events), plus the DCAP status claims it adds.
    claims = json.loads(
        (shared_dir / "testdata/trustee/verifier-parse_tdx_claims_expected.json").read_text()
    )
    report_data, init_data = claims.pop("report_data"), claims.pop("init_data")
    claims.update(tcb_status="UpToDate", collateral_expiration_status="0")
    evidence = {"tdx": claims, "report_data": report_data, "init_data": init_data}
    body = claims["quote"]["body"]
    reference_values = {name: [body[name]] for name in ("mr_td", "rtmr_1", "rtmr_2", "xfam")}
    appraisal = engine.appraise(CPU, input_=evidence, reference_values=reference_values)
    assert claims["td_attributes"]["debug"] is True
    assert _vector(appraisal) == (4, 2, 36)
    assert appraisal.status == "warning"


def test_cpu_identifiers_extension_from_agent_policy(engine):
    containers = [
        {"OCI": {"Annotations": {"io.kubernetes.cri.image-name": "pause:3.9"}, "Process": {}}},
        {
            "OCI": {
                "Annotations": {"io.kubernetes.cri.image-name": "nginx:1.27"},
                "Process": {"User": {"UID": 101}},
            }
        },
    ]
    evidence = with_agent_policy(tdx_evidence(), containers)
    appraisal = engine.appraise(CPU, input_=evidence, reference_values=TDX_REFERENCE_VALUES)
    assert appraisal.extensions == (
        Extension(
            name="ear.trustee.identifiers",
            key=-18,
            value={
                "validated": {
                    "container_images": ["pause:3.9", "nginx:1.27"],
                    "container_uids": [101],
                }
            },
        ),
    )


@pytest.mark.parametrize(
    "init_data_claims",
    [None, {}, {"agent_policy_claims": {}}, {"agent_policy_claims": {"containers": []}}],
)
def test_cpu_identifiers_extension_without_containers(engine, init_data_claims):
    evidence = {**tdx_evidence(), "init_data_claims": init_data_claims}
    appraisal = engine.appraise(CPU, input_=evidence, reference_values=TDX_REFERENCE_VALUES)
    assert appraisal.extensions == (
        Extension(name="ear.trustee.identifiers", key=-18, value={"validated": {}}),
    )


# ----------------------------------------------------------------------------- sample


def test_sample_with_reference_values_is_affirming(engine):
    appraisal = engine.appraise(
        CPU, input_=sample_evidence(), reference_values=SAMPLE_REFERENCE_VALUES
    )
    assert _vector(appraisal) == (3, 2, 2)
    assert appraisal.status == "affirming"


def test_sample_without_reference_values_is_contraindicated(engine):
    appraisal = engine.appraise(CPU, input_=sample_evidence(), reference_values={})
    assert _vector(appraisal) == (33, 97, 2)
    assert appraisal.status == "contraindicated"


@pytest.mark.parametrize(
    ("reference_values", "vector"),
    [
        ({**SAMPLE_REFERENCE_VALUES, "svn": ["2"]}, (3, 97, 2)),
        ({**SAMPLE_REFERENCE_VALUES, "major_version": 2}, (3, 97, 2)),
        ({**SAMPLE_REFERENCE_VALUES, "minimum_minor_version": 5}, (3, 97, 2)),
        ({**SAMPLE_REFERENCE_VALUES, "launch_digest": ["xyz"]}, (33, 2, 2)),
        # Rego orders null below numbers: an unregistered minimum passes (as in Trustee).
        (
            {k: v for k, v in SAMPLE_REFERENCE_VALUES.items() if k != "minimum_minor_version"},
            (3, 2, 2),
        ),
    ],
)
def test_sample_reference_value_mismatches(engine, reference_values, vector):
    appraisal = engine.appraise(CPU, input_=sample_evidence(), reference_values=reference_values)
    assert _vector(appraisal) == vector


def test_sample_debug_is_not_approved(engine):
    evidence = sample_evidence()
    evidence["sample"]["debug"] = True
    appraisal = engine.appraise(CPU, input_=evidence, reference_values=SAMPLE_REFERENCE_VALUES)
    assert _vector(appraisal) == (3, 2, 36)
    assert appraisal.status == "warning"


# ---------------------------------------------------------------------------- SEV-SNP


def test_snp_good_guest_is_affirming(engine):
    appraisal = engine.appraise(
        CPU, input_={"snp": SNP_CLAIMS}, reference_values=SNP_REFERENCE_VALUES
    )
    assert _vector(appraisal) == (3, 2, 2)
    assert appraisal.status == "affirming"


def test_snp_safe_but_unmatched_configuration_earns_3(engine):
    reference_values = {**SNP_REFERENCE_VALUES, "snp_smt_enabled": False}
    appraisal = engine.appraise(CPU, input_={"snp": SNP_CLAIMS}, reference_values=reference_values)
    assert _vector(appraisal) == (3, 2, 3)
    assert appraisal.status == "affirming"


@pytest.mark.parametrize("flag", ["policy_debug_allowed", "policy_migrate_ma"])
def test_snp_debug_or_migration_agent_is_not_approved(engine, flag):
    claims = {**SNP_CLAIMS, flag: True}
    appraisal = engine.appraise(CPU, input_={"snp": claims}, reference_values=SNP_REFERENCE_VALUES)
    assert _vector(appraisal) == (3, 2, 36)


def test_snp_old_firmware_is_not_recognized(engine):
    claims = {**SNP_CLAIMS, "reported_tcb_microcode": 71}
    appraisal = engine.appraise(CPU, input_={"snp": claims}, reference_values=SNP_REFERENCE_VALUES)
    assert _vector(appraisal) == (3, 97, 2)
    assert appraisal.status == "contraindicated"


# ---------------------------------------------------------------- Azure vTPM, TPM, SE


def test_az_snp_vtpm(engine):
    good = engine.appraise(
        CPU, input_={"az-snp-vtpm": AZ_SNP}, reference_values=AZ_SNP_REFERENCE_VALUES
    )
    assert _vector(good) == (3, 2, 2)
    assert good.status == "affirming"
    changed = copy.deepcopy(AZ_SNP)
    changed["tpm"]["pcr11"] = "00" * 32
    changed["policy_abi_minor"] = 30
    bad = engine.appraise(
        CPU, input_={"az-snp-vtpm": changed}, reference_values=AZ_SNP_REFERENCE_VALUES
    )
    assert _vector(bad) == (33, 2, 36)


def test_az_tdx_vtpm(engine):
    reference_values = {"mr_td": [MR_TD], "xfam": [XFAM], "tdx_pcr11": ["8d" * 32]}
    good = engine.appraise(CPU, input_={"az-tdx-vtpm": AZ_TDX}, reference_values=reference_values)
    assert _vector(good) == (3, 2, 2)
    outdated = {**AZ_TDX, "tcb_status": "OutOfDate"}
    bad = engine.appraise(CPU, input_={"az-tdx-vtpm": outdated}, reference_values=reference_values)
    assert _vector(bad) == (3, 97, 2)
    assert bad.status == "contraindicated"


def test_tpm(engine):
    tpm = {"pcr11": "9e" * 32, "ak_public": "-----BEGIN PUBLIC KEY-----..."}
    reference_values = {"tpm_pcr11": ["9e" * 32], "trusted_aks": [tpm["ak_public"]]}
    good = engine.appraise(CPU, input_={"tpm": tpm}, reference_values=reference_values)
    assert _vector(good) == (3, 2, 0)
    assert good.status == "affirming"
    unknown_ak = engine.appraise(
        CPU, input_={"tpm": tpm}, reference_values={"tpm_pcr11": ["9e" * 32]}
    )
    assert _vector(unknown_ak) == (33, 2, 0)


def test_se_is_trusted_on_presence(engine):
    appraisal = engine.appraise(CPU, input_={"se": {"version": 256}}, reference_values={})
    assert _vector(appraisal) == (3, 2, 2)
    assert appraisal.status == "affirming"


# ------------------------------------------------------------------------- default_gpu


def test_gpu_sample_device(engine):
    evidence = {"sampledevice": {"svn": "2", "report_data": "AA=="}}
    registered = engine.appraise(GPU, input_=evidence, reference_values={"device_svn": ["2"]})
    assert _vector(registered) == (33, 2, 36)
    assert registered.status == "warning"
    assert registered.extensions == ()
    unregistered = engine.appraise(GPU, input_=evidence, reference_values={})
    assert unregistered.status == "contraindicated"


def test_gpu_nvidia_good(engine):
    appraisal = engine.appraise(
        GPU, input_={"nvidia": NVIDIA}, reference_values=NVIDIA_REFERENCE_VALUES
    )
    assert _vector(appraisal) == (3, 2, 2)
    assert appraisal.status == "affirming"


@pytest.mark.parametrize(
    ("change", "reference_values", "vector"),
    [
        ({}, {}, (3, 2, 3)),
        ({"dbgstat": "enabled"}, NVIDIA_REFERENCE_VALUES, (3, 2, 36)),
        ({"secboot": False}, NVIDIA_REFERENCE_VALUES, (3, 2, 36)),
        ({"x-nvidia-gpu-arch-check": False}, NVIDIA_REFERENCE_VALUES, (3, 97, 2)),
        (
            {"x-nvidia-gpu-attestation-report-cert-chain": {"x-nvidia-cert-status": "revoked"}},
            NVIDIA_REFERENCE_VALUES,
            (3, 97, 2),
        ),
        ({"x-nvidia-gpu-driver-rim-version-match": False}, NVIDIA_REFERENCE_VALUES, (33, 2, 2)),
        ({"x-nvidia-gpu-vbios-rim-fetched": False}, NVIDIA_REFERENCE_VALUES, (33, 2, 2)),
        ({"measres": "fail"}, NVIDIA_REFERENCE_VALUES, (33, 2, 2)),
    ],
)
def test_gpu_nvidia_failures(engine, change, reference_values, vector):
    appraisal = engine.appraise(
        GPU, input_={"nvidia": {**NVIDIA, **change}}, reference_values=reference_values
    )
    assert _vector(appraisal) == vector


# ------------------------------------------------------------------ resource policies


@pytest.mark.parametrize(
    ("submods", "allowed"),
    [
        ({"cpu0": appraisal_claims("affirming")}, True),
        ({"cpu0": appraisal_claims("affirming"), "gpu0": appraisal_claims("affirming")}, True),
        ({"cpu0": appraisal_claims("affirming"), "gpu0": appraisal_claims("warning")}, False),
        ({"cpu0": appraisal_claims("warning")}, False),
        ({"cpu0": appraisal_claims("contraindicated")}, False),
        ({"cpu0": appraisal_claims("none")}, False),
        ({"cpu0": appraisal_claims("warning", tee="sample")}, False),
        ({"cpu0": appraisal_claims("contraindicated", tee="sample")}, False),
        ({"cpu0": {"ear.trustworthiness-vector": {"hardware": 2}}}, False),
        ({"cpu0": {"ear.status": "Affirming"}}, False),
        ({}, False),
    ],
)
def test_default_resource_policy(engine, submods, allowed):
    decision = engine.allow(
        DEFAULT_RESOURCE_POLICY, input_=token_claims(**submods), data=RESOURCE_DATA
    )
    assert decision.allowed is allowed
    assert decision.reason == ("" if allowed else "allow is false")


@pytest.mark.parametrize("claims", [{}, {"submods": None}, {"submods": "affirming"}])
def test_default_resource_policy_denies_malformed_claims(engine, claims):
    assert not engine.allow(DEFAULT_RESOURCE_POLICY, input_=claims, data=RESOURCE_DATA).allowed


SIMPLE_REPORTS = [{"policy-id": "default", "policy-hash": "ab"}]


@pytest.mark.parametrize(
    ("claims", "allowed"),
    [
        # A Simple token is issued only when its policies were satisfied.
        ({"evaluation-reports": SIMPLE_REPORTS, "tee": "tdx"}, True),
        ({"evaluation-reports": []}, False),
        ({"evaluation-reports": "default"}, False),
        ({"evaluation-reports": None}, False),
        # An EAR token cannot pass as Simple, whatever its submods say.
        ({"evaluation-reports": SIMPLE_REPORTS, "submods": False}, False),
        ({"evaluation-reports": SIMPLE_REPORTS, "submods": {}}, False),
        (
            {
                "evaluation-reports": SIMPLE_REPORTS,
                "submods": {"cpu0": appraisal_claims("contraindicated")},
            },
            False,
        ),
    ],
)
def test_default_resource_policy_and_simple_tokens(engine, claims, allowed):
    decision = engine.allow(DEFAULT_RESOURCE_POLICY, input_=claims, data=RESOURCE_DATA)
    assert decision.allowed is allowed


@pytest.mark.parametrize(
    ("plugin", "allowed"), [("resource", True), ("nebula-ca", False), ("", False)]
)
def test_allow_all_sample(engine, plugin, allowed):
    claims = token_claims(cpu0=appraisal_claims("contraindicated"))
    decision = engine.allow(
        SAMPLE_RESOURCE_POLICIES["allow_all"],
        input_=claims,
        data={**RESOURCE_DATA, "plugin": plugin},
    )
    assert decision.allowed is allowed


def test_deny_all_sample(engine):
    claims = token_claims(cpu0=appraisal_claims("affirming"))
    decision = engine.allow(SAMPLE_RESOURCE_POLICIES["deny_all"], input_=claims, data=RESOURCE_DATA)
    assert not decision.allowed


# ------------------------------------------------------------------------- packaging


def test_wheel_ships_the_rego_files(tmp_path):
    # Build the wheel the way `pip wheel` would and look inside; hatchling is a dev
    # dependency, so this needs no network.
    builder = WheelBuilder(str(ROOT))
    (wheel,) = builder.build(directory=str(tmp_path), versions=["standard"])
    names = set(zipfile.ZipFile(wheel).namelist())
    for stem in ("default_cpu", "default_gpu", "resource_policy", "allow_all", "deny_all"):
        assert f"policy/policies/{stem}.rego" in names
