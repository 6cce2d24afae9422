# SPDX-License-Identifier: Apache-2.0
"""The OpenAPI document describes every route of every API, error answers included."""

from __future__ import annotations

import pytest
from fastapi import FastAPI

from kbs import openapi
from kbs.app import create_app
from kbs.errors import ERROR_TYPE_PREFIX
from support.kbs_app import make_admin_key, settings_for

_ERROR_STATUSES = {"400", "401", "404", "409", "413", "429", "500", "503"}
#: Error answers that are not the KBS error body, by the reference's wire format.
_OTHER_BODIES = {
    ("/readyz", "503"),  # the readiness report, as for 200
    ("/certificate", "404"),  # restful-as: {"error": "No certificate configured"}
    ("/as/certificate", "404"),
}


def _app(tmp_path, apis=("kbs", "as")) -> FastAPI:
    return create_app(settings_for(tmp_path, make_admin_key(tmp_path)), apis=apis)


@pytest.mark.parametrize("apis", [("kbs", "as"), ("kbs",), ("as",)])
def test_every_route_is_in_the_spec_with_its_error_answers(tmp_path, apis):
    app = _app(tmp_path, apis)
    spec = app.openapi()
    routes = list(openapi.documented_routes(app))
    assert routes
    for method, path, _route in routes:
        operation = spec["paths"].get(path, {}).get(method.lower())
        assert operation is not None, f"{method} {path} is not in the spec"
        responses = operation["responses"]
        assert any(s.startswith("2") or s == "404" for s in responses), (method, path)
        # Every route can fail; each failure it can give is documented with a body.
        errors = set(responses) & _ERROR_STATUSES
        assert errors, f"{method} {path} documents no error answer"
        for status in errors:
            content = responses[status].get("content")
            assert content, f"{method} {path} {status} has no body schema"
            for media_type, body in content.items():
                if media_type == "application/json" and (path, status) not in _OTHER_BODIES:
                    assert body["schema"]["title"] == "KbsError", (method, path, status)
                    assert body["schema"]["required"] == ["type", "detail"]
                else:
                    assert media_type in ("text/plain", "application/json"), (method, path)
        assert "X-Request-Id" in responses[next(iter(responses))]["headers"]


def test_the_spec_has_no_operation_without_a_route(tmp_path):
    app = _app(tmp_path)
    served = {(m, p) for m, p, _ in openapi.documented_routes(app)}
    documented = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }
    assert documented == served


def test_hidden_routes_are_documented(tmp_path):
    paths = _app(tmp_path).openapi()["paths"]
    # include_in_schema=False routes: metrics, the /as copies, the KBS's catch-all 404s.
    assert paths["/metrics"]["get"]["responses"]["200"]["content"] == {
        "text/plain": {"schema": {"type": "string"}}
    }
    assert "post" in paths["/as/attestation"]
    assert set(paths["/kbs/v0/{plugin}"]) == {"get", "post", "put", "delete", "patch", "options"}
    plugin = paths["/kbs/v0/{plugin}"]["get"]["parameters"][0]["schema"]
    assert "auth" in plugin["not"]["enum"]
    assert "resource" in plugin["not"]["enum"]


def test_error_bodies_are_the_kbs_error_body(tmp_path):
    paths = _app(tmp_path).openapi()["paths"]
    auth = paths["/kbs/v0/auth"]["post"]
    assert set(auth["responses"]) == {"200", "401", "413", "429", "500", "503"}
    schema = auth["responses"]["401"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["type", "detail"]
    assert set(schema["properties"]) == {"type", "detail", "request_id"}
    assert schema["additionalProperties"] is False
    assert ERROR_TYPE_PREFIX + "AttestationError" in schema["properties"]["type"]["enum"]
    assert "Retry-After" in auth["responses"]["429"]["headers"]
    assert set(auth["requestBody"]["content"]) == {"application/json"}
    internal = auth["responses"]["500"]["content"]["application/json"]["schema"]
    assert internal["properties"]["type"]["enum"] == [ERROR_TYPE_PREFIX + "InternalError"]


def test_non_json_bodies_are_typed(tmp_path):
    paths = _app(tmp_path).openapi()["paths"]
    resource = paths["/kbs/v0/resource/{path}"]
    jwe = resource["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert jwe["required"] == ["protected", "encrypted_key", "iv", "ciphertext", "tag"]
    assert resource["post"]["requestBody"]["content"] == {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
    }
    assert resource["post"]["security"] == [{"AdminBearer": []}]
    assert "security" not in resource["get"]
    attestation = paths["/attestation"]["post"]["responses"]
    assert "content" not in attestation["200"]  # the bare token, without a Content-Type
    assert attestation["500"]["content"] == {"text/plain": {"schema": {"type": "string"}}}
    assert attestation["429"]["content"]["application/json"]["schema"]["title"] == "KbsError"


def test_no_validation_error_answers(tmp_path):
    # No route validates its parameters with pydantic: a 422 is never answered.
    spec = _app(tmp_path).openapi()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert "422" not in operation["responses"], (method, path)
    assert "HTTPValidationError" not in spec.get("components", {}).get("schemas", {})


def test_an_undocumented_route_fails_the_build(tmp_path):
    app = _app(tmp_path)

    @app.get("/undocumented")
    async def undocumented() -> None:
        return None

    with pytest.raises(LookupError, match="no OpenAPI documentation for GET /undocumented"):
        openapi.build_openapi(app)


async def test_the_served_spec_is_the_full_one(tmp_path):
    from support.kbs_app import running_kbs  # noqa: PLC0415

    settings = settings_for(tmp_path, make_admin_key(tmp_path))
    async with running_kbs(settings) as kbs:
        response = await kbs.http.get("/openapi.json")
    assert response.status_code == 200
    assert "/metrics" in response.json()["paths"]


async def test_routing_errors_use_the_error_body(tmp_path):
    from support.kbs_app import running_kbs  # noqa: PLC0415

    settings = settings_for(tmp_path, make_admin_key(tmp_path))
    async with running_kbs(settings) as kbs:
        missing = await kbs.http.get("/nowhere")
        wrong_method = await kbs.http.put("/healthz")
        # "$" in the route patterns matches before a final newline: refused before routing.
        newline = await kbs.http.post("/kbs/v0/resource/a/b/c%0A", content=b"x")
        control = await kbs.http.get("/kbs/v0/x/a%01b")
    assert missing.status_code == 404
    assert missing.json()["type"] == ERROR_TYPE_PREFIX + "PluginNotFound"
    assert missing.headers["x-request-id"] == missing.json()["request_id"]
    for response in (newline, control):
        assert response.status_code == 404
        assert response.json()["type"] == ERROR_TYPE_PREFIX + "InvalidRequestPath"
        assert "control character" in response.json()["detail"]
    assert not (tmp_path / "repository" / "a" / "b" / "c").exists()
    assert wrong_method.status_code == 405
    assert wrong_method.json()["type"] == ERROR_TYPE_PREFIX + "MethodNotAllowed"
    assert wrong_method.headers["allow"] == "GET"
