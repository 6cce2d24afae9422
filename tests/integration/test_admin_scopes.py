# SPDX-License-Identifier: Apache-2.0
"""Scoped admins over HTTP: roles granted actions on resource path patterns, on top of
(or instead of) Trustee's regex ACL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kbs.client.api import AdminClient, KbsClientError
from support.kbs_app import (
    SAMPLE_REFERENCE_VALUES,
    AdminKey,
    RunningKbs,
    make_admin_key,
    running_kbs,
    settings_for,
)

ERR = "https://github.com/confidential-containers/kbs/errors/"
CAI = "cai/key/model"
ALIYUN = "default/aliyun/model-decryption-key"

GRANTS = [
    {"role": "cai-admin", "actions": ["read", "write", "delete", "policy"], "resources": ["cai/*"]},
    {
        "role": "kms-admin",
        "actions": ["read", "write", "delete", "policy"],
        "resources": ["default/aliyun/*"],
    },
    {"role": "security", "actions": ["policy", "audit"], "resources": ["*"]},
    {"role": "auditor", "actions": ["audit"], "resources": ["cai/*"]},
    {"role": "writer", "actions": ["write"], "resources": ["cai/*"]},
]


def admin_settings(key: AdminKey, *, acls: list[dict[str, str]] | None = None) -> dict[str, Any]:
    authorization: dict[str, Any] = {"grants": GRANTS}
    if acls is not None:
        authorization["regex_acl"] = {"acls": acls}
    return {
        "admin": {
            "authorization_mode": "AuthenticatedAuthorization",
            "authentication": {
                "bearer_jwt": {"identity_providers": [{"public_key_uri": str(key.public_path)}]}
            },
            "authorization": authorization,
        }
    }


@pytest.fixture
async def scoped(tmp_path: Path) -> AsyncIterator[RunningKbs]:
    key = make_admin_key(tmp_path)
    settings = settings_for(tmp_path, None, overrides=admin_settings(key))
    async with running_kbs(settings, admin_key=key) as kbs:
        await kbs.admin(role="security").set_reference_values(SAMPLE_REFERENCE_VALUES)
        await kbs.admin(role="cai-admin").set_resource(CAI, b"cai secret")
        await kbs.admin(role="kms-admin").set_resource(ALIYUN, b"kms secret")
        yield kbs


async def denied(call: Any, match: str = "AdminAuthAccess") -> str:
    with pytest.raises(KbsClientError, match=match) as info:
        await call
    assert info.value.status == 401
    return str(info.value)


async def test_cai_admin_cannot_touch_aliyun(scoped: RunningKbs) -> None:
    cai = scoped.admin(role="cai-admin")
    # Allowed on its own prefix.
    assert await cai.set_resource("cai/key/other", b"x") is not None
    assert (await cai.resource_versions(CAI))["path"] == CAI
    # Nothing under default/aliyun/*: not read, not write, not delete, not listed.
    message = await denied(cai.set_resource(ALIYUN, b"overwrite"))
    assert f"may not write {ALIYUN}" in message
    await denied(cai.get_resource_version(ALIYUN, "1"))
    await denied(cai.resource_versions(ALIYUN))
    await denied(cai.rollback_resource(ALIYUN, "1"))
    await denied(cai.delete_resource(ALIYUN))
    await denied(cai.delete_resource(ALIYUN, version="1"))
    assert [e["path"] for e in await cai.list_resources()] == ["cai/key/model", "cai/key/other"]
    assert await cai.list_resources(prefix="default/aliyun/*") == []
    # Nor can it attach a policy there, or above its prefix.
    await denied(cai.set_release_policy("default/aliyun/*", allow_list={"tee": ["tdx"]}))
    await denied(cai.set_release_policy("*", allow_list={"tee": ["tdx"]}))
    await cai.set_release_policy("cai/key/*", allow_list={"tee": ["sample"]})
    # The value is untouched.
    kms = scoped.admin(role="kms-admin")
    assert await kms.get_resource_version(ALIYUN, "1") == b"kms secret"
    assert [e["path"] for e in await kms.list_resources()] == [ALIYUN]


async def test_global_endpoints_need_a_grant_on_everything(scoped: RunningKbs) -> None:
    cai = scoped.admin(role="cai-admin")
    await denied(cai.set_resource_policy("package policy\ndefault allow := false\n"))
    await denied(cai.get_resource_policy())
    await denied(cai.set_attestation_policy("package policy\n"))
    await denied(cai.set_reference_values({"svn": ["2"]}))
    await denied(cai.get_reference_value("svn"))
    security = scoped.admin(role="security")
    assert await security.get_resource_policy() == ["resource-policy"]
    assert await security.get_reference_value("svn") == ["1"]
    # Policy, not resources: the security role cannot read secrets.
    await denied(security.get_resource_version(CAI, "1"))
    assert await security.list_resources() == []


async def test_explain_and_audit_are_scoped(scoped: RunningKbs) -> None:
    claims = {"submods": {}}
    cai = scoped.admin(role="cai-admin")
    assert (await cai.explain(CAI, claims=claims))["decision"] == "deny"
    await denied(cai.explain(ALIYUN, claims=claims))
    await denied(cai.audit(), match="no audit grant")
    auditor = scoped.admin(role="auditor")
    records = (await auditor.audit(limit=500))["records"]
    assert records
    assert {r["resource"] for r in records} == {CAI}
    everything = (await scoped.admin(role="security").audit(limit=500))["records"]
    assert {r["resource"] for r in everything} >= {CAI, ALIYUN}
    await denied(auditor.audit_verify())
    assert (await scoped.admin(role="security").audit_verify())["ok"]


async def test_roles_without_grants_and_partial_grants(scoped: RunningKbs) -> None:
    message = await denied(scoped.admin(role="nobody").list_resources())
    assert "role nobody has no grants" in message
    writer = scoped.admin(role="writer")
    await writer.set_resource(CAI, b"rotated")
    await denied(writer.get_resource_version(CAI, "1"))
    await denied(writer.delete_resource(CAI))
    assert await writer.list_resources() == []  # listing needs read
    whoami = await writer.whoami()
    assert whoami["roles"] == ["writer"]
    assert whoami["grants"] == [{"role": "writer", "actions": ["write"], "resources": ["cai/*"]}]


async def test_regex_acl_still_applies_with_grants(tmp_path: Path) -> None:
    key = make_admin_key(tmp_path)
    acls = [{"role": "cai-admin", "allowed_endpoints": "^/kbs/v0/resource(/.*)?$"}]
    settings = settings_for(tmp_path, None, overrides=admin_settings(key, acls=acls))
    async with running_kbs(settings, admin_key=key) as kbs:
        cai = kbs.admin(role="cai-admin")
        await cai.set_resource(CAI, b"x")  # ACL and grant allow it
        message = await denied(cai.explain(CAI, claims={}))  # grant would, the ACL does not
        assert "not allowed for path /kbs/v0/explain" in message
        await denied(cai.set_resource(ALIYUN, b"x"))  # ACL would, the grant does not
        # security has no ACL entry at all.
        await denied(kbs.admin(role="security").get_resource_policy())


async def test_roles_from_a_list_claim_combine_grants(tmp_path: Path) -> None:
    key = make_admin_key(tmp_path)
    overrides = admin_settings(key)
    overrides["admin"]["authentication"]["bearer_jwt"]["role_claim"] = "groups"
    settings = settings_for(tmp_path, None, overrides=overrides)
    async with running_kbs(settings, admin_key=key) as kbs:
        import jwt  # noqa: PLC0415
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

        from kbs.clock import SystemClock  # noqa: PLC0415

        now = int(SystemClock().now().timestamp())
        private = serialization.load_pem_private_key(key.private_pem, password=None)
        token = jwt.encode(
            {"groups": ["cai-admin", "kms-admin"], "exp": now + 300, "sub": "alice"},
            private,
            algorithm="EdDSA",
        )
        both = AdminClient("http://kbs", token=token, http=kbs.http)
        await both.set_resource(CAI, b"a")
        await both.set_resource(ALIYUN, b"b")
        assert [e["path"] for e in await both.list_resources()] == [CAI, ALIYUN]
        security = kbs.admin(role="security", role_claim="groups")
        records = (await security.audit(kind="admin"))["records"]
        assert {r["actor"] for r in records} == {"alice"}
