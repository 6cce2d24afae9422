# SPDX-License-Identifier: Apache-2.0
"""Aliyun KMS resource configuration: Trustee's keys, the openanolis fork's, ours, and mounts."""

from __future__ import annotations

import dataclasses
import json
import traceback
from pathlib import Path
from typing import Any

import pytest

from kbs.settings import ConfigError, KbsSettings, load_settings
from storage_backends.aliyun_kms import AliyunKmsSettings
from support.kms_app import kms_environment_names

ROOT = Path(__file__).resolve().parents[3]
CLIENT_KEY = json.dumps({"KeyId": "KAAP.0b2a", "PrivateKeyData": "TUlJSi1rZXktZGF0YQ=="})
PASSWORD = "pw-3c7d1e9a"
CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
AK_SECRET = "ak-secret-5f2b"
TRUSTEE = {
    "client_key": CLIENT_KEY,
    "kms_instance_id": "kst-hzz6",
    "password": PASSWORD,
    "cert_pem": CA,
}


@pytest.fixture(autouse=True)
def _hermetic_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in kms_environment_names():
        monkeypatch.delenv(name)


def load(plugin: dict[str, Any], **top: Any) -> KbsSettings:
    return load_settings(None, overrides={**top, "plugins": [{"name": "resource", **plugin}]})


def kms(plugin: dict[str, Any], **top: Any) -> AliyunKmsSettings:
    entry = load(plugin, **top).resource_plugin
    assert entry is not None
    return entry.aliyun_kms_settings()


# --------------------------------------------------------------------------- Trustee keys


@pytest.mark.parametrize(
    ("key", "value"),
    [("storage_backend_type", "Aliyun"), ("type", "Aliyun"), ("storage_backend_type", "aliyun")],
)
def test_trustee_keys_are_contents(key: str, value: str) -> None:
    settings = kms({key: value, **TRUSTEE})
    assert settings.client_key == CLIENT_KEY
    assert settings.password == PASSWORD
    assert settings.cert_pem == CA
    assert settings.kms_instance_id == "kst-hzz6"
    assert settings.instance_configured
    assert not settings.shared_configured
    assert settings.instance_endpoint is None  # <kst>.cryptoservice.kms.aliyuncs.com


def test_file_path_variants(tmp_path: Path) -> None:
    settings = kms(
        {
            "storage_backend_type": "Aliyun",
            "kms_instance_id": "kst-hzz6",
            "client_key_path": str(tmp_path / "clientKey_KAAP.json"),
            "password_path": str(tmp_path / "clientKey_KAAP_Password.txt"),
            "cert_pem_path": str(tmp_path / "PrivateKmsCA_kst-hzz6.pem"),
        }
    )
    assert settings.client_key_path == tmp_path / "clientKey_KAAP.json"
    assert settings.password_path == tmp_path / "clientKey_KAAP_Password.txt"
    assert settings.cert_pem_path == tmp_path / "PrivateKmsCA_kst-hzz6.pem"


def test_content_and_path_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="set either password or password_path, not both"):
        load({"type": "Aliyun", **TRUSTEE, "password_path": str(tmp_path / "pw")})


def test_an_incomplete_instance_configuration_names_what_is_missing() -> None:
    with pytest.raises(ConfigError, match=r"plugins\.0: .*missing password"):
        load({"type": "Aliyun", "client_key": CLIENT_KEY, "kms_instance_id": "kst-hzz6"})


def test_aliyun_keys_on_another_backend_are_refused() -> None:
    with pytest.raises(ConfigError, match=r'client_key, password: Aliyun KMS keys need .*"Aliyun"'):
        load({"type": "LocalFs", "client_key": CLIENT_KEY, "password": PASSWORD})


# --------------------------------------------------------------------------- the fork's keys


def test_fork_endpoint_is_the_instance_gateway_with_a_client_key() -> None:
    settings = kms({"type": "Aliyun", **TRUSTEE, "endpoint": "https://kst-hzz6.example:8443/"})
    assert settings.instance_endpoint == "kst-hzz6.example:8443"
    assert settings.shared_endpoint is None


def test_fork_endpoint_is_the_shared_gateway_in_access_key_mode() -> None:
    settings = kms(
        {
            "type": "Aliyun",
            "access_key_id": "LTAI",
            "access_key_secret": AK_SECRET,
            "region_id": "cn-hangzhou",
            "endpoint": "kms-vpc.cn-hangzhou.aliyuncs.com",
        }
    )
    assert settings.effective_credential_type == "access_key"
    assert settings.access_key_secret == AK_SECRET
    assert settings.shared_endpoint == "kms-vpc.cn-hangzhou.aliyuncs.com"
    assert not settings.instance_configured


def test_fork_endpoint_conflicts_and_plain_http_are_refused() -> None:
    with pytest.raises(ConfigError, match="set endpoint .* or instance_endpoint, not both"):
        load({"type": "Aliyun", **TRUSTEE, "endpoint": "a", "instance_endpoint": "b"})
    with pytest.raises(ConfigError, match="reached over https"):
        load({"type": "Aliyun", **TRUSTEE, "endpoint": "http://kst-hzz6.example"})


def test_cert_pem_without_a_client_key_points_to_shared_ca_path() -> None:
    with pytest.raises(ConfigError, match="for a private shared gateway's CA use shared_ca_path"):
        load({"type": "Aliyun", "credential_type": "default", "region_id": "r", "cert_pem": CA})


def test_empty_strings_count_as_unset() -> None:
    # What the fork's Helm chart 1.7.x renders when only the client key is configured.
    settings = kms(
        {
            "type": "Aliyun",
            **TRUSTEE,
            "access_key_id": "",
            "access_key_secret": "",
            "region_id": "",
            "endpoint": "",
            "insecure_skip_tls_verify": False,
        }
    )
    assert settings.instance_configured
    assert not settings.shared_configured
    assert settings.instance_endpoint is None


def test_fork_environment_overrides_win_over_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KBS_RESOURCE_STORAGE_ALIYUN_PASSWORD", "from-env")
    monkeypatch.setenv("KBS_RESOURCE_STORAGE_ALIYUN_KMS_INSTANCE_ID", "kst-env")
    monkeypatch.setenv("KBS_RESOURCE_STORAGE_ALIYUN_ENDPOINT", "env.example:443")
    monkeypatch.setenv("KBS_RESOURCE_STORAGE_ALIYUN_REGION_ID", "")  # empty: ignored
    settings = kms({"type": "Aliyun", **TRUSTEE, "region_id": "cn-file"})
    assert settings.password == "from-env"
    assert settings.kms_instance_id == "kst-env"
    assert settings.instance_endpoint == "env.example:443"
    assert settings.region_id == "cn-file"


def test_fork_access_key_variables_only_fill_gaps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIYUN_KMS_ACCESS_KEY_ID", "LTAI-env")
    monkeypatch.setenv("ALIYUN_KMS_ACCESS_KEY_SECRET", AK_SECRET)
    monkeypatch.setenv("ALIYUN_KMS_REGION_ID", "cn-env")
    settings = kms({"type": "Aliyun", **TRUSTEE, "region_id": "cn-file"})
    # Reads stay on the instance gateway; the access key enables writes and listing.
    assert settings.instance_configured
    assert settings.effective_credential_type == "access_key"
    assert settings.access_key_id == "LTAI-env"
    assert settings.region_id == "cn-file"


def test_fork_environment_does_not_touch_other_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KBS_RESOURCE_STORAGE_ALIYUN_PASSWORD", "from-env")
    plugin = load({"type": "LocalFs"}).resource_plugin
    assert plugin is not None
    assert plugin.password is None


# --------------------------------------------------------------------------- ours


def test_our_keys_reach_the_backend_settings() -> None:
    settings = kms(
        {
            "type": "Aliyun",
            "credential_type": "oidc_role_arn",
            "role_arn": "acs:ram::1:role/kbs",
            "oidc_provider_arn": "acs:ram::1:oidc-provider/ack-rrsa-c1",
            "oidc_token_file_path": "/var/run/secrets/ack.alibabacloud.com/rrsa-tokens/token",
            "region_id": "cn-hangzhou",
            "shared_network": "vpc",
            "kms_instance_id": "kst-hzz6",
            "naming": "template",
            "name_template": "kbs/{repository}/{type}/{tag}",
            "cache_ttl": 60,
            "cache_max_stale": 600,
            "max_attempts": 3,
            "recovery_window_days": 7,
            "force_delete": True,
            "decode_binary_secrets": False,
        }
    )
    assert settings.effective_credential_type == "oidc_role_arn"
    assert settings.oidc_token_file_path == Path(
        "/var/run/secrets/ack.alibabacloud.com/rrsa-tokens/token"
    )
    assert settings.shared_network == "vpc"
    assert (settings.naming, settings.name_template) == (
        "template",
        "kbs/{repository}/{type}/{tag}",
    )
    assert (settings.cache_ttl, settings.cache_max_stale, settings.max_attempts) == (60, 600, 3)
    assert (settings.recovery_window_days, settings.force_delete) == (7, True)
    assert settings.decode_binary_secrets is False
    # Unset keys keep the backend's defaults.
    defaults = {f.name: f.default for f in dataclasses.fields(AliyunKmsSettings)}
    assert settings.read_timeout == defaults["read_timeout"]


def test_backend_range_checks_surface_as_config_errors() -> None:
    with pytest.raises(ConfigError, match="recovery_window_days must be between 7 and 30"):
        load({"type": "Aliyun", **TRUSTEE, "recovery_window_days": 3})
    with pytest.raises(ConfigError, match=r"plugins\.0\.naming: Input should be 'tag' or"):
        load({"type": "Aliyun", **TRUSTEE, "naming": "tags"})


@pytest.mark.parametrize("switch", ["insecure_skip_tls_verify", "insecure_shared_gateway_http"])
def test_insecure_switches_are_refused_in_production_and_warned_otherwise(switch: str) -> None:
    plugin = {"type": "Aliyun", **TRUSTEE, switch: True}
    with pytest.raises(ConfigError, match=f"plugins.resource: {switch} is refused when environ"):
        load(plugin)
    settings = load(plugin, environment="development")
    assert f"plugins.resource.{switch}" in settings.insecure_settings()


# --------------------------------------------------------------------------- secrets


def test_secrets_stay_out_of_reprs_and_error_chains() -> None:
    plugin = {"type": "Aliyun", **TRUSTEE, "access_key_id": "LTAI", "access_key_secret": AK_SECRET}
    settings = load({**plugin, "region_id": "cn-hangzhou"})
    assert PASSWORD not in repr(settings)
    assert AK_SECRET not in repr(settings)
    assert "PrivateKeyData" not in repr(settings)
    # A validation error elsewhere in the entry: the chained pydantic error would quote the
    # entry in a traceback unless inputs are hidden. (pydantic shortens long inputs to
    # their ends, so the secrets sit at both ends here.)
    entry = {
        "password": PASSWORD,
        "type": "Aliyun",
        "recovery_window_days": 1,
        "region_id": "cn-hangzhou",
        **{k: v for k, v in plugin.items() if k not in {"type", "password"}},
    }
    entry["access_key_secret"] = entry.pop("access_key_secret")
    with pytest.raises(ConfigError) as caught:
        load_settings(None, overrides={"plugins": [entry | {"name": "resource"}]})
    text = "".join(traceback.format_exception(caught.value))
    assert "recovery_window_days must be between 7 and 30" in text
    for secret in (PASSWORD, AK_SECRET, "TUlJSi1rZXktZGF0YQ"):
        assert secret not in text


# --------------------------------------------------------------------------- mounts


def test_a_kms_mount_beside_files() -> None:
    plugin = load(
        {
            "type": "LocalFs",
            "dir_path": "/srv/kbs/repository",
            "mounts": [{"path": "default/aliyun", "storage_backend_type": "Aliyun", **TRUSTEE}],
        }
    ).resource_plugin
    assert plugin is not None
    (mount,) = plugin.mounts
    assert (mount.repository, mount.resource_type) == ("default", "aliyun")
    settings = mount.aliyun_kms_settings()
    assert (settings.tag_repository, settings.tag_type) == ("default", "aliyun")


def test_tag_mode_writes_follow_the_mount_path() -> None:
    plugin = load(
        {
            "mounts": [
                {"path": "models/kms", "type": "Aliyun", **TRUSTEE},
                {"path": "x/*", "type": "LocalFs"},
            ]
        }
    ).resource_plugin
    assert plugin is not None
    settings = plugin.mounts[0].aliyun_kms_settings()
    assert (settings.tag_repository, settings.tag_type) == ("models", "kms")
    with pytest.raises(ConfigError, match="tag_repository must match the mount path models/kms"):
        load(
            {"mounts": [{"path": "models/kms", "type": "Aliyun", **TRUSTEE, "tag_repository": "o"}]}
        )


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("*/*", "mount path \\*/\\* is the plugin's own backend"),
        ("a/b/c", "must be <repository>/<type>"),
        ("a", "must be <repository>/<type>"),
        (".hidden/x", "must be <repository>/<type>"),
        ("a/", "must be <repository>/<type>"),
    ],
)
def test_bad_mount_paths(path: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load({"mounts": [{"path": path, "type": "LocalFs"}]})


def test_mounts_need_a_backend_type_and_unique_paths() -> None:
    with pytest.raises(ConfigError, match=r"mounts\.0\.storage_backend_type: Field required"):
        load({"mounts": [{"path": "a/b"}]})
    with pytest.raises(ConfigError, match="mount path a/b is given more than once"):
        load({"mounts": [{"path": "a/b", "type": "LocalFs"}, {"path": "a/b", "type": "kvstorage"}]})


def test_insecure_switches_in_mounts_are_refused_in_production() -> None:
    mount = {
        "path": "default/aliyun",
        "type": "Aliyun",
        **TRUSTEE,
        "insecure_skip_tls_verify": True,
    }
    with pytest.raises(ConfigError, match=r"plugins.resource.mounts\[default/aliyun\]"):
        load({"mounts": [mount]})
