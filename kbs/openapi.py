# SPDX-License-Identifier: Apache-2.0
"""The OpenAPI document of the whole application, error answers and raw bodies included.

FastAPI derives a spec from the route decorators, but our routes read their bodies
themselves (the wire format is Trustee's, not a pydantic model's), so that spec has no
request bodies, no error bodies and no content types. :func:`install` replaces
``app.openapi`` with a builder that starts from FastAPI's spec and completes every
operation from :data:`OPERATIONS`, one entry per route of every API ``create_app`` can
mount, including the routes FastAPI leaves out (``/metrics``, the ``/as`` copies of the
attestation-service API, the KBS's catch-all 404 routes).

Each entry names the request body, the success answer and every status the route can
answer with. Error statuses of the KBS answer its ``{"type", "detail"}`` body (plus our
``request_id``); the attestation-service API answers most failures in the reference's
text framing. A route without an entry is a build error, so the spec cannot silently
fall behind the routes (``tests/unit/kbs/test_openapi.py`` checks both directions).
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import iter_route_contexts

from kbs.errors import ERROR_TYPE_PREFIX, error_variants

_logger = logging.getLogger(__name__)

__all__ = [
    "ERROR_SCHEMA",
    "OPERATIONS",
    "UNDOCUMENTED_METHODS",
    "OperationDoc",
    "build_openapi",
    "documented_routes",
    "install",
]

#: Methods never listed: HEAD answers as the GET of the same path, without a body.
UNDOCUMENTED_METHODS: Final = frozenset({"HEAD"})

#: Where the attestation-service API is mounted besides the root (kbs/routes/restful_as.py).
_AS_PREFIX: Final = "/as"

_JSON: Final = "application/json"
_TEXT: Final = "text/plain"
_OCTETS: Final = "application/octet-stream"

_ADMIN_SECURITY: Final[list[dict[str, list[str]]]] = [{"AdminBearer": []}]
_REQUEST_ID_HEADER: Final = {
    "X-Request-Id": {
        "description": "This request's id (the client's, if it sent a usable one)",
        "schema": {"type": "string"},
    }
}

#: The KBS error body (Trustee's ``ErrorInformation`` plus our ``request_id``).
ERROR_SCHEMA: Final[dict[str, Any]] = {
    "title": "KbsError",
    "type": "object",
    "required": ["type", "detail"],
    "properties": {
        "type": {
            "type": "string",
            "description": "The error variant, as a URI in Trustee's error namespace",
        },
        "detail": {"type": "string", "description": "What failed, safe to show"},
        "request_id": {"type": "string", "description": "This request's id"},
    },
    "additionalProperties": False,
}

#: Why each status is answered (its OpenAPI description).
_STATUS_TEXT: Final[Mapping[int, str]] = {
    400: "The request is malformed",
    401: "Not authenticated or not authorised, rejected evidence, token or policy",
    404: "The path names no endpoint, plugin or resource path",
    409: "The change conflicts with the stored state",
    413: "The request body exceeds the configured limit",
    429: "Too many requests from this client; retry after Retry-After seconds",
    500: "An unexpected fault of ours (a fixed detail; the trace is in the log)",
    503: "A dependency of ours (database, secret backend, PCCS, audit trail) failed",
}

#: The attestation service's text framing of failures (kbs/routes/restful_as.py).
_AS_TEXT_STATUSES: Final = frozenset({400, 413, 500})


@dataclass(frozen=True, slots=True)
class OperationDoc:
    """How one operation is documented.

    Attributes:
        summary: used only for routes FastAPI leaves out of its spec.
        body: the request body's media types and schemas, or None for no body.
        body_required: whether a body must be sent.
        ok: the success answers: status -> (media type or None for no body, schema).
        errors: the error statuses answered with the KBS error body.
        text_errors: the error statuses answered in the attestation service's text.
        admin: whether the KBS admin authentication applies (a Bearer JWT).
        query: optional query parameters: name -> description.
        description: added to the operation's description.
    """

    summary: str
    body: Mapping[str, Mapping[str, Any]] | None = None
    body_required: bool = True
    ok: Mapping[int, tuple[str | None, Mapping[str, Any]]] = field(
        default_factory=lambda: {200: (None, {})}
    )
    errors: frozenset[int] = frozenset({500})
    text_errors: frozenset[int] = frozenset()
    admin: bool = False
    query: Mapping[str, str] = field(default_factory=dict)
    description: str | None = None


# --------------------------------------------------------------------------- schemas

_ANY: Final[dict[str, Any]] = {}
_OBJECT: Final[dict[str, Any]] = {"type": "object"}
_STRINGS: Final[dict[str, Any]] = {"type": "array", "items": {"type": "string"}}
_JWE: Final[dict[str, Any]] = {
    "title": "Jwe",
    "description": "The secret, encrypted to the TEE key of the token (flattened JWE JSON)",
    "type": "object",
    "required": ["protected", "encrypted_key", "iv", "ciphertext", "tag"],
    "properties": {
        name: {"type": "string"}
        for name in ("protected", "encrypted_key", "iv", "ciphertext", "tag")
    },
}
_AUTH_REQUEST: Final[dict[str, Any]] = {
    "title": "AuthRequest",
    "description": "kbs-types Request",
    "type": "object",
    "required": ["version", "tee"],
    "properties": {
        "version": {"type": "string"},
        "tee": {"type": "string"},
        "extra-params": _ANY,
    },
}
_CHALLENGE: Final[dict[str, Any]] = {
    "title": "Challenge",
    "type": "object",
    "required": ["nonce", "extra-params"],
    "properties": {"nonce": {"type": "string"}, "extra-params": _ANY},
}
_ATTESTATION: Final[dict[str, Any]] = {
    "title": "Attestation",
    "description": (
        "kbs-types Attestation in the shape of the session's protocol version: "
        "runtime-data (nonce, tee-pubkey), tee-evidence, optional init-data (0.4.0); "
        "tee-pubkey and tee-evidence (0.1.x-0.3.0)"
    ),
    "type": "object",
}
_TOKEN: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["token"],
    "properties": {"token": {"type": "string"}},
}
_RESOURCE_INFO: Final[dict[str, Any]] = {
    "title": "ResourceInfo",
    "type": "object",
    "required": ["path", "backend"],
    "properties": {
        "path": {"type": "string"},
        "backend": {"type": "string"},
        "size": {"type": ["integer", "null"]},
        "created": {"type": ["string", "null"]},
        "updated": {"type": ["string", "null"]},
        "version": {"type": ["string", "null"]},
        "versions": {"type": ["integer", "null"]},
    },
}
_RESOURCE_LIST: Final[dict[str, Any]] = {
    "description": "Resource metadata, or with ?format=paths the list of path strings",
    "type": "array",
    "items": {"anyOf": [_RESOURCE_INFO, {"type": "string"}]},
}
_POLICY_UPLOAD: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["policy"],
    "properties": {"policy": {"type": "string", "description": "URL-safe base64 Rego"}},
}
_ATTESTATION_POLICY_UPLOAD: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["policy_id", "policy"],
    "properties": {
        "type": {"type": "string", "enum": ["rego"]},
        "policy_id": {"type": "string"},
        "policy": {"type": "string", "description": "URL-safe base64 Rego"},
    },
}
_RELEASE_POLICY: Final[dict[str, Any]] = {
    "title": "ReleasePolicySummary",
    "type": "object",
    "required": ["prefix", "kind", "sha384"],
    "properties": {
        "prefix": {"type": "string"},
        "kind": {"type": "string"},
        "sha384": {"type": "string"},
        "updated": {"type": "string"},
        "updated_by": {"type": ["string", "null"]},
        "policy": {"type": "string"},
        "allow_list": _OBJECT,
    },
}
_RELEASE_POLICY_UPLOAD: Final[dict[str, Any]] = {
    "description": "A path pattern and exactly one of policy (URL-safe base64 Rego) or allow_list",
    "type": "object",
    "required": ["prefix"],
    "properties": {
        "prefix": {"type": "string"},
        "policy": {"type": "string"},
        "allow_list": {"type": "object", "additionalProperties": _STRINGS},
    },
}
_EXPLAIN: Final[dict[str, Any]] = {
    "description": "A resource path and either an attestation token or its claims",
    "type": "object",
    "required": ["resource"],
    "properties": {
        "resource": {"type": "string"},
        "token": {"type": "string"},
        "claims": _OBJECT,
        "query": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
_JWKS: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["keys"],
    "properties": {"keys": {"type": "array", "items": _OBJECT}},
}
_READYZ: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["status", "checks"],
    "properties": {
        "status": {"type": "string", "enum": ["ready", "unavailable"]},
        "checks": {"type": "object", "additionalProperties": {"type": "string"}},
        "collateral": _ANY,
    },
}
_AS_ATTESTATION: Final[dict[str, Any]] = {
    "description": (
        "verification_requests (or the legacy single tee/evidence form), policy_ids, "
        "optional token_type"
    ),
    "type": "object",
}
_AS_CHALLENGE: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["tee", "tee_params"],
    "properties": {"tee": {"type": "string"}, "tee_params": _ANY},
}
_AS_POLICY: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["policy_id", "policy"],
    "properties": {
        "type": {"type": "string"},
        "policy_id": {"type": "string"},
        "policy": {"type": "string", "description": "URL-safe base64 Rego"},
    },
}
_AS_POLICY_LIST: Final[dict[str, Any]] = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["policy-id", "policy-hash"],
        "properties": {"policy-id": {"type": "string"}, "policy-hash": {"type": "string"}},
    },
}
_DISCOVERY: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["issuer", "jwks_uri"],
    "properties": {"issuer": {"type": "string"}, "jwks_uri": {"type": "string"}},
}

# --------------------------------------------------------------------------- the table

_KBS: Final = frozenset({500})
_ADMIN: Final = frozenset({401, 500, 503})
_ADMIN_WRITE: Final = _ADMIN | {413}
_RESOURCE: Final = frozenset({401, 404, 500, 503})
_EMPTY_OK: Final[dict[int, tuple[str | None, Mapping[str, Any]]]] = {200: (None, {})}
_FALLBACK_METHODS: Final = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")


def _json_ok(schema: Mapping[str, Any]) -> dict[int, tuple[str | None, Mapping[str, Any]]]:
    return {200: (_JSON, schema)}


def _json_body(schema: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {_JSON: schema}


def _fallbacks() -> Iterator[tuple[tuple[str, str], OperationDoc]]:
    doc = OperationDoc(
        summary="No such KBS endpoint or plugin",
        ok={},
        errors=frozenset({404, 500}),
        body=_json_body(_ANY),
        body_required=False,
        description=(
            "Answers 404 PluginNotFound (InvalidRequestPath for /kbs/v0/) for any path "
            "and method under /kbs/v0/ that no other operation serves."
        ),
    )
    for method in _FALLBACK_METHODS:
        for path in ("/kbs/v0/", "/kbs/v0/{plugin}", "/kbs/v0/{plugin}/{rest}"):
            yield (method, path), doc


#: Every operation of every API, keyed by (method, path template).
OPERATIONS: Final[Mapping[tuple[str, str], OperationDoc]] = {
    # ---- KBS guest protocol (RCAR)
    ("POST", "/kbs/v0/auth"): OperationDoc(
        summary="Open an RCAR session",
        body=_json_body(_AUTH_REQUEST),
        ok=_json_ok(_CHALLENGE),
        errors=frozenset({401, 413, 429, 500, 503}),
    ),
    ("POST", "/kbs/v0/attest"): OperationDoc(
        summary="Submit evidence",
        body=_json_body(_ATTESTATION),
        ok=_json_ok(_TOKEN),
        errors=frozenset({401, 413, 429, 500, 503}),
    ),
    ("GET", "/kbs/v0/resource/{path}"): OperationDoc(
        summary="Fetch a secret",
        ok={200: (_JSON, _JWE)},
        errors=_RESOURCE,
        query={"version": "Admin: read this kept version (raw bytes, application/octet-stream)"},
        description=(
            "With ?version= this is an admin read answering application/octet-stream; "
            "guests get the JWE JSON."
        ),
    ),
    ("POST", "/kbs/v0/resource/{path}"): OperationDoc(
        summary="Store a secret",
        body={_OCTETS: {"type": "string", "format": "binary"}},
        body_required=False,
        ok=_EMPTY_OK,
        errors=_RESOURCE | {409, 413},
        admin=True,
    ),
    ("DELETE", "/kbs/v0/resource/{path}"): OperationDoc(
        summary="Delete a secret",
        ok=_EMPTY_OK,
        errors=_RESOURCE | {409},
        admin=True,
        query={"version": "Delete only this kept version"},
    ),
    ("GET", "/kbs/v0/resource"): OperationDoc(
        summary="List resources",
        ok=_json_ok(_RESOURCE_LIST),
        errors=_RESOURCE,
        admin=True,
        query={"prefix": "A path pattern such as cai/*", "format": "paths: path strings only"},
    ),
    ("GET", "/kbs/v0/resource/"): OperationDoc(
        summary="List resources (the same as without the trailing slash)",
        ok=_json_ok(_RESOURCE_LIST),
        errors=_RESOURCE,
        admin=True,
        query={"prefix": "A path pattern such as cai/*", "format": "paths: path strings only"},
    ),
    ("GET", "/kbs/v0/resource-versions/{path}"): OperationDoc(
        summary="Kept versions",
        ok=_json_ok(_OBJECT),
        errors=_RESOURCE,
        admin=True,
    ),
    ("POST", "/kbs/v0/resource-rollback/{path}"): OperationDoc(
        summary="Roll back",
        body=_json_body(
            {
                "type": "object",
                "required": ["version"],
                "properties": {"version": {"type": "string"}},
            }
        ),
        ok=_json_ok(
            {
                "type": "object",
                "required": ["path", "version", "restored"],
                "properties": {
                    "path": {"type": "string"},
                    "version": {"type": ["string", "null"]},
                    "restored": {"type": "string"},
                },
            }
        ),
        errors=_RESOURCE | {409, 413},
        admin=True,
    ),
    # ---- Trustee admin API
    ("POST", "/kbs/v0/resource-policy"): OperationDoc(
        summary="Set the resource policy",
        body=_json_body(_POLICY_UPLOAD),
        ok=_EMPTY_OK,
        errors=_ADMIN_WRITE,
        admin=True,
    ),
    ("GET", "/kbs/v0/resource-policy"): OperationDoc(
        summary="Resource policy ids", ok=_json_ok(_STRINGS), errors=_ADMIN, admin=True
    ),
    ("POST", "/kbs/v0/attestation-policy"): OperationDoc(
        summary="Set an attestation policy",
        body=_json_body(_ATTESTATION_POLICY_UPLOAD),
        ok=_EMPTY_OK,
        errors=_ADMIN_WRITE,
        admin=True,
    ),
    ("POST", "/kbs/v0/reference-value"): OperationDoc(
        summary="Register reference values",
        body=_json_body(_OBJECT),
        ok=_EMPTY_OK,
        errors=_ADMIN_WRITE,
        admin=True,
        description="The body is an RVPS message (version, type, payload).",
    ),
    ("GET", "/kbs/v0/reference-value/{rv_id}"): OperationDoc(
        summary="Read a reference value",
        ok=_json_ok(_ANY),
        # 404: an id with a line break matches no route (the router's answer).
        errors=_ADMIN | {404},
        admin=True,
    ),
    # ---- our key-admin API
    ("GET", "/kbs/v0/release-policy"): OperationDoc(
        summary="Release policies",
        ok=_json_ok({"anyOf": [{"type": "array", "items": _RELEASE_POLICY}, _RELEASE_POLICY]}),
        errors=_ADMIN | {404},
        admin=True,
        query={"prefix": "Show the policy on this path pattern (with its text)"},
    ),
    ("POST", "/kbs/v0/release-policy"): OperationDoc(
        summary="Set a release policy",
        body=_json_body(_RELEASE_POLICY_UPLOAD),
        ok=_json_ok(_RELEASE_POLICY),
        errors=_ADMIN_WRITE,
        admin=True,
    ),
    ("DELETE", "/kbs/v0/release-policy"): OperationDoc(
        summary="Delete a release policy",
        ok=_EMPTY_OK,
        errors=_ADMIN | {404},
        admin=True,
        query={"prefix": "The path pattern whose policy to delete"},
    ),
    ("POST", "/kbs/v0/explain"): OperationDoc(
        summary="Explain a release decision",
        body=_json_body(_EXPLAIN),
        ok=_json_ok(_OBJECT),
        errors=_ADMIN_WRITE | {400, 404},
        admin=True,
    ),
    ("GET", "/kbs/v0/audit"): OperationDoc(
        summary="Query the audit trail",
        ok=_json_ok(_OBJECT),
        errors=_ADMIN | {400},
        admin=True,
        query=dict.fromkeys(
            (
                "kind",
                "action",
                "outcome",
                "actor",
                "request_id",
                "resource",
                "since",
                "until",
                "limit",
                "after",
                "before",
                "order",
            ),
            "Filter or page the records (see docs/admin.md)",
        ),
    ),
    ("GET", "/kbs/v0/audit/verify"): OperationDoc(
        summary="Verify the audit chain", ok=_json_ok(_OBJECT), errors=_ADMIN, admin=True
    ),
    ("GET", "/kbs/v0/admin/whoami"): OperationDoc(
        summary="The caller's admin identity", ok=_json_ok(_OBJECT), errors=_ADMIN, admin=True
    ),
    # ---- service endpoints
    ("GET", "/healthz"): OperationDoc(summary="Liveness", errors=_KBS),
    ("GET", "/readyz"): OperationDoc(
        summary="Readiness",
        ok={200: (_JSON, _READYZ), 503: (_JSON, _READYZ)},
        errors=_KBS,
        description="503 with the same body when a check fails.",
    ),
    ("GET", "/.well-known/jwks.json"): OperationDoc(
        summary="Token signer keys", ok=_json_ok(_JWKS), errors=_KBS
    ),
    ("GET", "/metrics"): OperationDoc(
        summary="Prometheus metrics",
        ok={200: (_TEXT, {"type": "string"})},
        errors=_KBS,
        description="The Prometheus text exposition format (version 0.0.4).",
    ),
    ("GET", "/openapi.json"): OperationDoc(
        summary="This OpenAPI document", ok=_json_ok(_OBJECT), errors=_KBS
    ),
    ("GET", "/docs"): OperationDoc(
        summary="Swagger UI for this document", ok={200: ("text/html", {"type": "string"})}
    ),
    ("GET", "/docs/oauth2-redirect"): OperationDoc(
        summary="Swagger UI OAuth2 redirect page", ok={200: ("text/html", {"type": "string"})}
    ),
    ("GET", "/redoc"): OperationDoc(
        summary="ReDoc for this document", ok={200: ("text/html", {"type": "string"})}
    ),
    # ---- attestation service (restful-as)
    ("POST", "/attestation"): OperationDoc(
        summary="Verify evidence, issue a token",
        body=_json_body(_AS_ATTESTATION),
        ok={200: (None, {})},
        errors=frozenset({429}),
        text_errors=frozenset({400, 413, 500}),
        description=(
            "200 answers the bare token (compact JWS) without a Content-Type; failures "
            "are the reference's text, rejected evidence included (500)."
        ),
    ),
    ("POST", "/challenge"): OperationDoc(
        summary="Supplemental challenge",
        body=_json_body(_AS_CHALLENGE),
        ok=_EMPTY_OK,
        errors=frozenset({429}),
        text_errors=frozenset({400, 413, 500}),
    ),
    ("POST", "/policy"): OperationDoc(
        summary="Set an attestation policy",
        body=_json_body(_AS_POLICY),
        ok=_EMPTY_OK,
        errors=frozenset({401}),
        text_errors=frozenset({400, 413, 500}),
        admin=True,
    ),
    ("GET", "/policy"): OperationDoc(
        summary="List attestation policies",
        ok=_json_ok(_AS_POLICY_LIST),
        errors=frozenset({401}),
        text_errors=frozenset({500}),
        admin=True,
    ),
    ("GET", "/policies"): OperationDoc(
        summary="List attestation policies",
        ok=_json_ok(_AS_POLICY_LIST),
        errors=frozenset({401}),
        text_errors=frozenset({500}),
        admin=True,
    ),
    ("GET", "/policy/{policy_id}"): OperationDoc(
        summary="Read an attestation policy",
        ok={200: (None, {})},
        errors=frozenset({401}),
        text_errors=frozenset({500}),
        admin=True,
        description="200 answers the Rego text without a Content-Type.",
    ),
    ("DELETE", "/policy/{policy_id}"): OperationDoc(
        summary="Delete an attestation policy",
        ok=_EMPTY_OK,
        errors=frozenset({401}),
        text_errors=frozenset({500}),
        admin=True,
    ),
    ("GET", "/certificate"): OperationDoc(
        summary="Token signer certificate chains",
        ok={
            200: ("application/x-pem-file", {"type": "string"}),
            404: (
                _JSON,
                {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}},
                },
            ),
        },
        errors=_KBS,
    ),
    ("GET", "/.well-known/openid-configuration"): OperationDoc(
        summary="Discovery document", ok=_json_ok(_DISCOVERY), errors=_KBS
    ),
    **dict(_fallbacks()),
}


# --------------------------------------------------------------------------- building


def documented_routes(app: FastAPI) -> Iterator[tuple[str, str, Any]]:
    """Every (method, OpenAPI path, route) the application serves, HEAD excepted."""
    for route in iter_route_contexts(app.routes):
        path = getattr(route, "path_format", None) or getattr(route, "path", None)
        methods = getattr(route, "methods", None)
        if path is None or not methods:
            continue
        for method in sorted(set(methods) - UNDOCUMENTED_METHODS):
            yield method, path, route


def _doc_for(method: str, path: str) -> OperationDoc:
    doc = OPERATIONS.get((method, path))
    if doc is None and path.startswith(_AS_PREFIX + "/"):
        # The attestation-service API's copy under /as answers exactly as at the root.
        doc = OPERATIONS.get((method, path[len(_AS_PREFIX) :]))
    if doc is None:
        raise LookupError(f"no OpenAPI documentation for {method} {path} (kbs/openapi.py)")
    return doc


def _error_schema(statuses: Mapping[int, tuple[str, ...]], status: int) -> dict[str, Any]:
    schema = copy.deepcopy(ERROR_SCHEMA)
    variants = statuses.get(status)
    if variants:
        schema["properties"]["type"]["enum"] = [ERROR_TYPE_PREFIX + v for v in variants]
    return schema


def _response(
    media_type: str | None, schema: Mapping[str, Any], description: str
) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "headers": dict(_REQUEST_ID_HEADER)}
    if media_type is not None:
        response["content"] = {media_type: {"schema": dict(schema)}}
    return response


def _kbs_endpoint_names() -> list[str]:
    """First segments under /kbs/v0/ that name an endpoint (the fallback never sees them)."""
    names = {path.split("/")[3] for _method, path in OPERATIONS if path.startswith("/kbs/v0/")}
    return sorted(name for name in names if name and not name.startswith("{"))


def _path_parameters(path: str) -> list[dict[str, Any]]:
    names = [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]
    parameters = []
    for name in names:
        # A "." or ".." segment never reaches the server: clients resolve it away.
        excluded = [".", ".."]
        if path.startswith("/kbs/v0/{plugin}") and name == "plugin":
            excluded += _kbs_endpoint_names()
        schema = {"type": "string", "minLength": 1, "not": {"enum": excluded}}
        parameters.append({"name": name, "in": "path", "required": True, "schema": schema})
    return parameters


def _complete(
    operation: dict[str, Any],
    doc: OperationDoc,
    *,
    path: str,
    variants: Mapping[int, tuple[str, ...]],
) -> None:
    fastapi_responses: dict[str, Any] = operation.get("responses", {})
    responses: dict[str, Any] = {}
    for status, (media_type, schema) in doc.ok.items():
        description = fastapi_responses.get(str(status), {}).get("description") or "Success"
        responses[str(status)] = _response(media_type, schema, description)
    errors = set(doc.errors)
    if "{" in path:
        # A parameter with a control character is refused before routing (kbs/app.py).
        errors.add(404)
    for status in sorted(errors):
        description = fastapi_responses.get(str(status), {}).get("description")
        responses[str(status)] = _response(
            _JSON, _error_schema(variants, status), description or _STATUS_TEXT[status]
        )
    for status in sorted(doc.text_errors):
        description = fastapi_responses.get(str(status), {}).get("description")
        responses[str(status)] = _response(
            _TEXT, {"type": "string"}, description or _STATUS_TEXT[status]
        )
    if 429 in doc.errors:  # noqa: PLR2004 - Too Many Requests
        responses["429"]["headers"]["Retry-After"] = {
            "description": "Seconds after which a retry can succeed",
            "schema": {"type": "string"},
        }
    # Path parameters are plain strings (FastAPI's 422 never happens).
    parameters = _path_parameters(path)
    parameters += [
        {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
        | {"description": text}
        for name, text in doc.query.items()
    ]
    if parameters:
        operation["parameters"] = parameters
    else:
        operation.pop("parameters", None)
    if doc.body is not None:
        operation["requestBody"] = {
            "required": doc.body_required,
            "content": {media: {"schema": dict(schema)} for media, schema in doc.body.items()},
        }
    if doc.admin:
        operation["security"] = _ADMIN_SECURITY
    if doc.description:
        operation["description"] = "\n\n".join(
            part for part in (operation.get("description"), doc.description) if part
        )
    operation["responses"] = responses


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document of ``app``: every route, every answer.

    Raises:
        LookupError: a route has no entry in :data:`OPERATIONS`.
    """
    spec = get_openapi(
        title=app.title,
        version=app.version,
        openapi_version=app.openapi_version,
        description=app.description,
        routes=app.routes,
    )
    paths: dict[str, Any] = spec.setdefault("paths", {})
    variants = error_variants()
    for method, path, route in documented_routes(app):
        doc = _doc_for(method, path)
        operations = paths.setdefault(path, {})
        operation = operations.setdefault(method.lower(), {})
        if not operation:
            # A route FastAPI leaves out of its spec (include_in_schema=False).
            endpoint = getattr(route, "endpoint", None)
            docstring = inspect.getdoc(endpoint) if endpoint is not None else None
            operation["summary"] = doc.summary
            if docstring:
                operation["description"] = docstring
            operation["operationId"] = (
                f"{method.lower()}_{path}".replace("/", "_")
                .replace("{", "")
                .replace("}", "")
                .replace(".", "_")
                .replace("-", "_")
            )
        _complete(operation, doc, path=path, variants=variants)
    components = spec.setdefault("components", {})
    # No route validates parameters with pydantic: FastAPI's 422 schemas are unused.
    schemas = components.get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    if not schemas:
        components.pop("schemas", None)
    components["securitySchemes"] = {
        "AdminBearer": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "An admin token from a configured identity provider ([admin])",
        }
    }
    return spec


def install(app: FastAPI) -> None:
    """Serve :func:`build_openapi`'s document at ``/openapi.json`` (built once, on demand)."""
    cached: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if not cached:
            cached.update(build_openapi(app))
        return cached

    app.openapi = openapi  # type: ignore[method-assign]
