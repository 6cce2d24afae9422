# SPDX-License-Identifier: Apache-2.0
"""``[attestation_service.verifier_config.dcap_verifier]``: Trustee's keys and ours."""

from __future__ import annotations

from pathlib import Path

import pytest

from kbs.settings import ConfigError, load_settings

ALIYUN = "https://sgx-dcap-server.cn-beijing.aliyuncs.com/sgx/certification/v4/"
INTEL = "https://api.trustedservices.intel.com/sgx/certification/v4/"
SECTION = "[attestation_service.verifier_config.dcap_verifier]\n"


def _load(tmp_path: Path, text: str, *, env: str = "production"):
    path = tmp_path / "kbs.toml"
    path.write_text(f'environment = "{env}"\n' + text)
    return load_settings(path).attestation_service.verifier_config.dcap_verifier


def test_defaults(tmp_path: Path) -> None:
    dcap = _load(tmp_path, "")
    assert dcap.enabled is True
    assert dcap.pccs_urls == (ALIYUN,)
    assert dcap.tcb_update_type == "early"  # Trustee's default
    assert (dcap.allow_dynamic_platform, dcap.allow_cached_keys, dcap.allow_smt) == (
        True,
        True,
        True,
    )
    assert dcap.insecure_root_ca_path is None
    assert dcap.refresh_interval_s == 300


def test_trustee_collateral_service_goes_first(tmp_path: Path) -> None:
    dcap = _load(
        tmp_path, SECTION + f'collateral_service = "{INTEL}"\ntcb_update_type = "standard"\n'
    )
    assert dcap.pccs_urls == (INTEL, ALIYUN)
    assert dcap.tcb_update_type == "standard"


def test_ordered_list_without_duplicates(tmp_path: Path) -> None:
    text = (
        SECTION + f'collateral_service = "{INTEL}"\ncollateral_services = ["{INTEL}", "{ALIYUN}"]\n'
    )
    assert _load(tmp_path, text).pccs_urls == (INTEL, ALIYUN)


def test_only_my_pccs(tmp_path: Path) -> None:
    text = SECTION + 'collateral_service = "https://pccs.internal:8081"\ncollateral_services = []\n'
    assert _load(tmp_path, text).pccs_urls == ("https://pccs.internal:8081",)


def test_no_url_at_all_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="collateral_service or at least one"):
        _load(tmp_path, SECTION + "collateral_services = []\n")
    # ... unless the verifier is disabled.
    assert _load(tmp_path, SECTION + "enabled = false\ncollateral_services = []\n").enabled is False


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file:///etc/kbs/collateral.json", "file:// collateral"),
        ("ftp://pccs", "must be http"),
        ("pccs.internal", "must be http"),
    ],
)
def test_bad_urls(tmp_path: Path, url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path, SECTION + f'collateral_service = "{url}"\n')
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path, SECTION + f'collateral_services = ["{url}"]\n')


def test_unknown_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="dcap_verifier.use_secure_cert: unknown key"):
        _load(tmp_path, SECTION + "use_secure_cert = true\n")


def test_insecure_root_is_refused_in_production(tmp_path: Path) -> None:
    text = SECTION + 'insecure_root_ca_path = "/tmp/root.der"\n'
    with pytest.raises(ConfigError, match="insecure_root_ca_path is refused"):
        _load(tmp_path, text)
    path = tmp_path / "kbs.toml"
    path.write_text('environment = "development"\n' + text)
    settings = load_settings(path)
    assert any("insecure_root_ca_path" in name for name in settings.insecure_settings())


def test_environment_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "KBS_ATTESTATION_SERVICE__VERIFIER_CONFIG__DCAP_VERIFIER__ALLOW_SMT", "false"
    )
    assert _load(tmp_path, "").allow_smt is False
