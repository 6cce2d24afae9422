# SPDX-License-Identifier: Apache-2.0
"""Admin identity providers over HTTP: JWKS and OIDC discovery on a loopback provider,
key rotation without restart, iss/aud/exp checks, clock skew, roles from other claims."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from support.idp import LoopbackIdp
from support.kbs_app import RunningKbs, make_admin_key, running_kbs, settings_for

ERR = "https://github.com/confidential-containers/kbs/errors/"
POLICY_IDS = "/kbs/v0/resource-policy"


@pytest.fixture
def idp() -> Iterator[LoopbackIdp]:
    with LoopbackIdp() as provider:
        yield provider


def admin_config(
    *providers: dict[str, Any],
    acl_role: str = "admin",
    **bearer: Any,
) -> dict[str, Any]:
    return {
        "admin": {
            "authorization_mode": "AuthenticatedAuthorization",
            "authentication": {
                "bearer_jwt": {"identity_providers": list(providers), **bearer},
            },
            "authorization": {
                "regex_acl": {"acls": [{"role": acl_role, "allowed_endpoints": "^/kbs/.*$"}]}
            },
        }
    }


@pytest.fixture
async def make_kbs(tmp_path: Path) -> AsyncIterator[Any]:
    stack: list[Any] = []

    async def start(config: dict[str, Any]) -> RunningKbs:
        manager = running_kbs(settings_for(tmp_path, None, overrides=config))
        stack.append(manager)
        return await manager.__aenter__()

    yield start
    for manager in reversed(stack):
        await manager.__aexit__(None, None, None)


async def call(kbs: RunningKbs, token: str, path: str = POLICY_IDS) -> tuple[int, str]:
    response = await kbs.http.get(path, headers={"Authorization": f"Bearer {token}"})
    detail = response.json().get("detail", "") if response.status_code != 200 else ""
    return response.status_code, detail


def jwks_provider(idp: LoopbackIdp, **extra: Any) -> dict[str, Any]:
    return {"issuer": idp.issuer, "audience": "kbs", "jwk_set_uri": idp.jwks_uri, **extra}


# --------------------------------------------------------------------------- claims


async def test_jwks_provider_token_checks(idp: LoopbackIdp, make_kbs) -> None:
    kbs = await make_kbs(admin_config(jwks_provider(idp)))
    assert await call(kbs, idp.token(role="admin", aud="kbs")) == (200, "")
    status, detail = await call(kbs, idp.token(role="admin", aud="kbs", lifetime_s=-120))
    assert (status, "token has expired" in detail) == (401, True)
    status, detail = await call(kbs, idp.token(role="admin", aud="kbs", iss="https://evil"))
    assert (status, "issuer is not accepted" in detail) == (401, True)
    status, detail = await call(kbs, idp.token(role="admin", aud="other"))
    assert (status, "audience is not accepted" in detail) == (401, True)
    status, detail = await call(kbs, idp.token(role="admin", aud=None))
    assert (status, "audience" in detail) == (401, True)
    status, detail = await call(kbs, idp.token(role="viewer", aud="kbs"))
    assert (status, "role viewer not allowed" in detail) == (401, True)
    status, detail = await call(kbs, idp.token(aud="kbs"))
    assert (status, "no role claim" in detail) == (401, True)
    # A token signed by a key the provider never published.
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

    forged = idp.token(role="admin", aud="kbs", private=ec.generate_private_key(ec.SECP256R1()))
    status, detail = await call(kbs, forged)
    assert (status, "not signed by a trusted identity provider" in detail) == (401, True)


@pytest.mark.parametrize(("skew", "expected"), [(60, 200), (10, 401)])
async def test_clock_skew_is_configurable(idp: LoopbackIdp, make_kbs, skew, expected) -> None:
    kbs = await make_kbs(admin_config(jwks_provider(idp), clock_skew_s=skew))
    # Expired 30 s ago: within a 60 s skew, outside a 10 s one.
    status, _ = await call(kbs, idp.token(role="admin", aud="kbs", lifetime_s=-30))
    assert status == expected


async def test_not_yet_valid_token(idp: LoopbackIdp, make_kbs) -> None:
    kbs = await make_kbs(admin_config(jwks_provider(idp), clock_skew_s=5))
    future = int(time.time()) + 600
    status, detail = await call(kbs, idp.token(role="admin", aud="kbs", nbf=future))
    assert (status, "not valid yet" in detail) == (401, True)


# --------------------------------------------------------------------------- roles


async def test_roles_from_a_groups_array(idp: LoopbackIdp, make_kbs) -> None:
    kbs = await make_kbs(admin_config(jwks_provider(idp), role_claim="groups"))
    assert (await call(kbs, idp.token(groups=["staff", "admin"], aud="kbs")))[0] == 200
    assert (await call(kbs, idp.token(groups=["staff"], aud="kbs")))[0] == 401
    # The Trustee claim is not looked at any more.
    status, detail = await call(kbs, idp.token(role="admin", aud="kbs"))
    assert (status, "no groups claim" in detail) == (401, True)


async def test_roles_from_a_json_pointer_per_provider(idp: LoopbackIdp, make_kbs) -> None:
    provider = jwks_provider(idp, role_claim="/realm_access/roles")
    kbs = await make_kbs(admin_config(provider))
    token = idp.token(realm_access={"roles": ["offline", "admin"]}, aud="kbs")
    assert (await call(kbs, token))[0] == 200
    assert (await call(kbs, idp.token(realm_access={"roles": "admin"}, aud="kbs")))[0] == 200
    assert (await call(kbs, idp.token(realm_access={"roles": [1, 2]}, aud="kbs")))[0] == 401


# --------------------------------------------------------------------------- providers


async def test_oidc_discovery(idp: LoopbackIdp, make_kbs) -> None:
    provider = {
        "issuer": idp.issuer,
        "audience": "kbs",
        "openid_configuration_uri": idp.discovery_uri,
    }
    kbs = await make_kbs(admin_config(provider))
    assert (await call(kbs, idp.token(role="admin", aud="kbs")))[0] == 200
    assert idp.fetches["discovery"] >= 1


async def test_discovery_naming_another_issuer_is_not_trusted(idp: LoopbackIdp, make_kbs) -> None:
    idp.discovery_issuer = "https://impostor.example"
    provider = {
        "issuer": idp.issuer,
        "audience": "kbs",
        "openid_configuration_uri": idp.discovery_uri,
    }
    kbs = await make_kbs(admin_config(provider, jwks_min_refresh_interval_s=0))
    status, detail = await call(kbs, idp.token(role="admin", aud="kbs"))
    assert (status, "key id is not known" in detail) == (401, True)
    assert idp.fetches["jwks"] == 0


async def test_jwk_set_uri_may_name_the_issuer_root(idp: LoopbackIdp, make_kbs) -> None:
    # Trustee: a jwk_set_uri that is not a JWKS falls back to its OIDC discovery document.
    kbs = await make_kbs(admin_config({"issuer": idp.issuer, "jwk_set_uri": idp.url}))
    assert (await call(kbs, idp.token(role="admin")))[0] == 200


async def test_several_providers_pem_and_jwks(idp: LoopbackIdp, make_kbs, tmp_path) -> None:
    pem = make_admin_key(tmp_path, "pem-admin")
    kbs = await make_kbs(admin_config(jwks_provider(idp), {"public_key_uri": str(pem.public_path)}))
    assert (await call(kbs, idp.token(role="admin", aud="kbs")))[0] == 200
    from kbs.client.api import AdminClient  # noqa: PLC0415

    client = AdminClient("http://kbs", private_key_pem=pem.private_pem, http=kbs.http)
    assert await client.get_resource_policy() == ["resource-policy"]


async def test_audience_mismatch_tries_the_next_provider(idp: LoopbackIdp, make_kbs) -> None:
    # The same issuer and keys, two audiences: either audience is accepted (Trustee).
    kbs = await make_kbs(admin_config(jwks_provider(idp), jwks_provider(idp, audience="ops")))
    assert (await call(kbs, idp.token(role="admin", aud="kbs")))[0] == 200
    assert (await call(kbs, idp.token(role="admin", aud="ops")))[0] == 200
    assert (await call(kbs, idp.token(role="admin", aud="dev")))[0] == 401


# --------------------------------------------------------------------------- rotation


async def test_key_rotation_is_picked_up_without_restart(idp: LoopbackIdp, make_kbs) -> None:
    kbs = await make_kbs(admin_config(jwks_provider(idp), jwks_min_refresh_interval_s=0))
    old_kid = idp.current_kid
    old_token = idp.token(role="admin", aud="kbs")
    assert (await call(kbs, old_token))[0] == 200
    fetched = idp.fetches["jwks"]
    # The provider rotates: a token with the new kid makes the KBS fetch the JWKS again.
    new_kid = idp.rotate()
    assert new_kid != old_kid
    assert (await call(kbs, idp.token(role="admin", aud="kbs")))[0] == 200
    assert idp.fetches["jwks"] == fetched + 1
    # The withdrawn key no longer verifies anything.
    status, detail = await call(kbs, old_token)
    assert status == 401
    assert "key id is not known" in detail


async def test_background_refresh_drops_withdrawn_keys(idp: LoopbackIdp, make_kbs) -> None:
    kbs = await make_kbs(admin_config(jwks_provider(idp), jwks_refresh_s=1))
    token = idp.token(role="admin", aud="kbs")
    assert (await call(kbs, token))[0] == 200
    fetched = idp.fetches["jwks"]
    idp.rotate()
    # Requests with the old kid are still served from the cache (and, within the
    # 10 s minimum refresh interval, cannot make the KBS fetch): the loop refreshes.
    for _ in range(100):
        if (await call(kbs, token))[0] == 401:
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the withdrawn key was never dropped")
    assert idp.fetches["jwks"] > fetched


async def test_unknown_kids_do_not_hammer_the_provider(idp: LoopbackIdp, make_kbs) -> None:
    kbs = await make_kbs(admin_config(jwks_provider(idp), jwks_min_refresh_interval_s=3600))
    fetched = idp.fetches["jwks"]
    for n in range(5):
        token = idp.token(role="admin", aud="kbs", headers={"kid": f"random-{n}"})
        assert (await call(kbs, token))[0] == 401
    assert idp.fetches["jwks"] == fetched  # the start-up fetch was within the interval


async def test_provider_down_at_start_then_back(idp: LoopbackIdp, make_kbs) -> None:
    idp.fail_status = 503
    kbs = await make_kbs(admin_config(jwks_provider(idp), jwks_min_refresh_interval_s=0))
    # The KBS started anyway (guests do not depend on the admin identity provider).
    assert (await kbs.http.get("/kbs/v0/resource/a/b/c")).json()["type"] == ERR + "TokenNotFound"
    assert (await call(kbs, idp.token(role="admin", aud="kbs")))[0] == 401
    idp.fail_status = None
    assert (await call(kbs, idp.token(role="admin", aud="kbs")))[0] == 200


async def test_slow_provider_times_out(idp: LoopbackIdp, make_kbs) -> None:
    kbs = await make_kbs(
        admin_config(jwks_provider(idp), fetch_timeout_s=0.3, jwks_min_refresh_interval_s=0)
    )
    idp.delay_s = 2.0
    started = time.monotonic()
    token = idp.token(role="admin", aud="kbs", headers={"kid": "not-published"})
    assert (await call(kbs, token))[0] == 401
    assert time.monotonic() - started < 1.9
    idp.delay_s = 0.0
    # The keys fetched before stay usable.
    assert (await call(kbs, idp.token(role="admin", aud="kbs")))[0] == 200
