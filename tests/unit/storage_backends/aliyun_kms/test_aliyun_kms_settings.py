# SPDX-License-Identifier: Apache-2.0
"""Settings validation and the resource path <-> secret name mapping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from storage_backends.aliyun_kms import (
    AliyunKmsConfigError,
    AliyunKmsSettings,
    TagNaming,
    TemplateNaming,
)
from storage_backends.base import ResourceDesc
from storage_backends.errors import InvalidResourcePathError

INSTANCE: dict[str, Any] = {
    "kms_instance_id": "kst-abc",
    "client_key": '{"KeyId": "KAAP.x", "PrivateKeyData": "MIIJ"}',
    "password": "pw-value-123",
    "cert_pem": "-----BEGIN CERTIFICATE-----",
}
SHARED: dict[str, Any] = {
    "access_key_id": "LTAIxyz",
    "access_key_secret": "ak-secret-value-456",
    "region_id": "cn-hangzhou",
}


def test_trustee_keys_configure_the_instance_gateway():
    settings = AliyunKmsSettings(**INSTANCE)
    assert settings.instance_configured
    assert not settings.shared_configured
    assert settings.naming == "tag"


def test_access_key_pair_implies_the_credential_type():
    assert AliyunKmsSettings(**SHARED).effective_credential_type == "access_key"
    sts = AliyunKmsSettings(**SHARED, security_token="tok")
    assert sts.effective_credential_type == "sts"


def test_repr_hides_credentials():
    settings = AliyunKmsSettings(**INSTANCE, **SHARED, security_token="sts-token-789")
    text = repr(settings)
    for secret in ("pw-value-123", "ak-secret-value-456", "sts-token-789", "MIIJ"):
        assert secret not in text
    assert "kst-abc" in text


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({}, "needs the kms instance gateway"),
        ({"client_key": "{}"}, "missing kms_instance_id, password"),
        ({**INSTANCE, "cert_pem": None}, "needs the instance CA"),
        ({**INSTANCE, "password_path": Path("/p")}, "either password or password_path"),
        ({**INSTANCE, "instance_endpoint": "https://x"}, "host\\[:port\\]"),
        ({"access_key_id": "a", "access_key_secret": "b"}, "region_id or shared_endpoint"),
        ({**SHARED, "credential_type": "ram_role_arn"}, "needs role_arn"),
        ({**SHARED, "credential_type": "sts"}, "needs security_token"),
        ({**SHARED, "shared_endpoint": "http://x"}, "without a scheme"),
        ({**INSTANCE, "read_gateway": "shared"}, "read_gateway=shared"),
        ({**SHARED, "read_gateway": "instance"}, "read_gateway=instance"),
        ({**SHARED, "recovery_window_days": 6}, "between 7 and 30"),
        ({**SHARED, "list_page_size": 101}, "between 1 and 100"),
        ({**SHARED, "max_attempts": 0}, "at least 1"),
        ({**SHARED, "cache_ttl": -1}, "cache_ttl"),
        ({**SHARED, "read_timeout": float("inf")}, "read_timeout"),
        ({**SHARED, "max_resource_bytes": 40_000}, "the kms limit"),
        ({**SHARED, "tag_repository": "../x"}, "valid path segments"),
        ({**SHARED, "naming": "template", "name_template": "{repository}-{type}-{tag}"}, "share"),
    ],
)
def test_invalid_settings(values: dict[str, Any], match: str):
    with pytest.raises(AliyunKmsConfigError, match=match):
        AliyunKmsSettings(**values)


def test_instance_id_alone_names_the_instance_for_new_secrets():
    settings = AliyunKmsSettings(**SHARED, kms_instance_id="kst-abc")
    assert settings.shared_configured
    assert not settings.instance_configured


def test_material_is_read_from_files(tmp_path: Path):
    (tmp_path / "key.json").write_text('{"KeyId": "KAAP.x"}')
    (tmp_path / "pw.txt").write_text("pw\n")
    (tmp_path / "ca.pem").write_text("PEM")
    settings = AliyunKmsSettings(
        kms_instance_id="kst-abc",
        client_key_path=tmp_path / "key.json",
        password_path=tmp_path / "pw.txt",
        cert_pem_path=tmp_path / "ca.pem",
    )
    material = settings.read_instance_material()
    assert material.client_key_json == '{"KeyId": "KAAP.x"}'
    assert material.password == "pw\n"  # stripped when the key is opened
    assert material.ca_pem == "PEM"
    assert "pw" not in repr(material)


def test_unreadable_file_is_a_config_error(tmp_path: Path):
    settings = AliyunKmsSettings(
        kms_instance_id="kst-abc",
        client_key_path=tmp_path / "missing.json",
        password="x",
        cert_pem="PEM",
    )
    with pytest.raises(AliyunKmsConfigError, match="cannot read aliyun kms client key file"):
        settings.read_instance_material()


# ---------------------------------------------------------------- naming


def test_tag_naming_is_trustee_compatible():
    naming = TagNaming(repository="default", type_="aliyun")
    assert naming.secret_name(ResourceDesc("default", "aliyun", "model-decryption-key")) == (
        "model-decryption-key"
    )
    assert naming.secret_name(ResourceDesc("other", "x", "model-decryption-key")) == (
        "model-decryption-key"
    )
    assert naming.resource_for("model-decryption-key") == ResourceDesc(
        "default", "aliyun", "model-decryption-key"
    )
    assert naming.resource_for("a/b") is None  # not a tag (made by template mode)
    assert naming.writable(ResourceDesc("default", "aliyun", "k"))
    assert not naming.writable(ResourceDesc("other", "aliyun", "k"))


def test_tag_naming_rejects_names_kms_cannot_hold():
    naming = TagNaming(repository="default", type_="aliyun")
    with pytest.raises(InvalidResourcePathError, match="too long"):
        naming.secret_name(ResourceDesc("default", "aliyun", "k" * 193))


def test_template_naming_round_trip_and_injectivity():
    naming = TemplateNaming("kbs/{repository}/{type}/{tag}")
    a = ResourceDesc("a-b", "c", "d")
    b = ResourceDesc("a", "b-c", "d")
    assert naming.secret_name(a) == "kbs/a-b/c/d"
    assert naming.secret_name(a) != naming.secret_name(b)
    assert naming.resource_for("kbs/a-b/c/d") == a
    assert naming.resource_for("model-decryption-key") is None
    assert naming.resource_for("kbs/a/b/c/d") is None
    assert naming.writable(ResourceDesc("any", "thing", "x"))


@pytest.mark.parametrize(
    ("template", "match"),
    [
        ("{repository}-{type}-{tag}", "separate placeholders"),
        ("{repository}{type}/{tag}", "separate placeholders"),
        ("{repository}/{tag}", "exactly once"),
        ("{repository}/{type}/{tag}/{tag}", "exactly once"),
        ("{repository}/{type}/{tag!r}", "only use the placeholders"),
        ("{repo}/{type}/{tag}", "only use the placeholders"),
        ("{repository}/{type}/{tag} x", "characters KMS does not allow"),
        ("acs/{repository}/{type}/{tag}", "reserved prefix"),
        ("{repository}/{type}/{tag", "not a valid format string"),
    ],
)
def test_unsafe_templates_are_rejected(template: str, match: str):
    with pytest.raises(ValueError, match=match):
        TemplateNaming(template)


def test_template_rejects_reserved_or_long_names_per_path():
    naming = TemplateNaming("{repository}/{type}/{tag}")
    with pytest.raises(InvalidResourcePathError, match="legal kms secret name"):
        naming.secret_name(ResourceDesc("acs", "ram", "x"))
    with pytest.raises(InvalidResourcePathError, match="too long"):
        naming.secret_name(ResourceDesc("r" * 100, "t" * 100, "x"))


SEGMENT = st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,20}", fullmatch=True)


@given(r1=SEGMENT, t1=SEGMENT, g1=SEGMENT, r2=SEGMENT, t2=SEGMENT, g2=SEGMENT)
def test_template_mapping_is_injective_and_reversible(r1, t1, g1, *, r2, t2, g2):
    naming = TemplateNaming("{tag}@{type}+x/{repository}")
    one, two = ResourceDesc(r1, t1, g1), ResourceDesc(r2, t2, g2)
    assert naming.resource_for(naming.secret_name(one)) == one
    if one != two:
        assert naming.secret_name(one) != naming.secret_name(two)
