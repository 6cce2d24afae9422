# SPDX-License-Identifier: Apache-2.0
"""``create_app``: the only place that builds the service's concrete parts.

Everything is built in the lifespan (database, signing key, policies, verifiers,
backends), so an application object is cheap to create and several can share one
database, as several server processes do.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import re
from collections.abc import AsyncIterator, Collection, Sequence
from pathlib import Path
from typing import Any, Final, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from attestation.base import Verifier
from attestation.errors import AttestationError
from attestation.registry import VerifierRegistry
from attestation.sample import SampleDeviceVerifier, SampleVerifier
from attestation.tdx.verifier import TdxVerifier
from kbs import __version__, db, gctune, hotsql, openapi
from kbs import metrics as metrics_routes
from kbs.admin_auth import build_admin_authorizer
from kbs.appraisal import AttestationService
from kbs.audit import AuditLog, load_or_create_audit_key
from kbs.clock import Clock, SystemClock
from kbs.deps import json_response
from kbs.entropy import Entropy, system_entropy
from kbs.errors import (
    DatabaseUnavailableError,
    ErrorInfo,
    InvalidRequestPathError,
    KbsError,
    PluginNotFoundError,
    RateLimitedError,
    describe,
)
from kbs.fastpath import GuestFastPath
from kbs.metrics import Metrics, MetricsMiddleware, TimedVerifier
from kbs.prefix import PathPrefixMiddleware
from kbs.ratelimit import RateLimiter, TrustedProxies
from kbs.release_policies import ReleasePolicyStore
from kbs.request_id import RequestIdMiddleware, current_request_id, is_guest_request
from kbs.resources import build_resource_router
from kbs.routes import admin, attest, auth, keyadmin, resource, restful_as, wellknown
from kbs.sessions import SessionStore
from kbs.settings import KbsSettings
from kbs.state import KbsState
from kbs.stores import (
    ATTESTATION_NAMESPACE,
    RESOURCE_NAMESPACE,
    SIMPLE_TOKEN_SIGNING_KEY,
    TOKEN_SIGNING_KEY,
    PolicyStore,
    ReferenceValueStore,
    load_or_create_certificate,
    load_or_create_rsa_signing_key,
    load_or_create_signing_key,
)
from kbs.tdx import TdxService, build_tdx_service
from kbs.tokens import (
    SimpleTokenSigner,
    TokenSigner,
    TokenVerifier,
    jwk_thumbprint,
    self_signed_certificate,
)
from kbs.uris import read_uri
from policy.defaults import (
    DEFAULT_ATTESTATION_POLICIES,
    DEFAULT_RESOURCE_POLICY,
    DEFAULT_RESOURCE_POLICY_ID,
)
from policy.engine import RegoEngine
from policy.errors import PolicyError
from storage_backends.errors import StorageError

_logger = logging.getLogger(__name__)

__all__ = ["API_NAMES", "ApiName", "create_app"]

#: The APIs one application can serve: the KBS (``/kbs/v0/...``) and the attestation
#: service (Trustee's ``restful-as``, at the root and under ``/as``).
ApiName = Literal["kbs", "as"]
API_NAMES: Final[tuple[ApiName, ...]] = ("kbs", "as")

#: Seconds between sweeps of expired sessions.
SESSION_SWEEP_INTERVAL_S: Final = 60.0
#: Longest back-off between sweeps while the database is failing.
SESSION_SWEEP_MAX_BACKOFF_S: Final = 300.0

_ALL_METHODS: Final = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]


def create_app(
    settings: KbsSettings,
    *,
    clock: Clock | None = None,
    entropy: Entropy = system_entropy,
    extra_verifiers: Sequence[Verifier] = (),
    apis: Collection[ApiName] = API_NAMES,
    tune_gc: bool = False,
) -> FastAPI:
    """Build the KBS application.

    Args:
        settings: the validated configuration.
        clock: the source of request instants (default: the system clock).
        entropy: the source of nonces and session ids (default: the OS CSPRNG).
        extra_verifiers: verifiers to register beside those the settings enable
            (tests use this to plug in fakes).
        apis: which APIs to serve: ``"kbs"``, ``"as"`` (the attestation-service API) or
            both (the default). Health, readiness and the JWK Set are always served.
        tune_gc: once started, tune this process's garbage collector for serving
            (:func:`kbs.gctune.tune_for_serving`); ``kbs serve`` workers do.

    Raises:
        ValueError: ``apis`` is empty or names an unknown API.
    """
    clock = clock or SystemClock()
    if not apis or any(api not in API_NAMES for api in apis):
        raise ValueError(f"apis must be a non-empty subset of {', '.join(API_NAMES)}")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state, tasks = await _start(settings, clock, entropy, extra_verifiers, app.state.metrics)
        app.state.kbs = state
        if tune_gc:
            gctune.tune_for_serving()
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await state.admin.aclose()
            await state.resources.aclose()
            if state.tdx is not None:
                await state.tdx.aclose()
            if state.hot_sql is not None:
                await state.hot_sql.aclose()
            await state.engine.dispose()

    app = FastAPI(
        title="Key Broker Service",
        version=__version__,
        description="Trustee-compatible Key Broker Service and attestation service.",
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry hook asks the OpenTelemetry API for its providers on
        # every request (~3% of a resource fetch); our telemetry is /metrics and the logs.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    _mount_routes(app, apis)
    # Every route in the spec, with its bodies and error answers (kbs/openapi.py).
    openapi.install(app)
    for exc_type in _HANDLED_ERRORS:
        app.add_exception_handler(exc_type, _error_handler)
    app.add_exception_handler(StarletteHTTPException, _routing_error_handler)
    app.state.metrics = Metrics()
    _add_middlewares(app, settings, apis, entropy)
    return app


def _add_middlewares(
    app: FastAPI, settings: KbsSettings, apis: Collection[ApiName], entropy: Entropy
) -> None:
    """Ours, innermost first (each ``add_middleware`` wraps everything added before it)."""
    if "kbs" in apis:
        # Innermost of ours: the guest endpoints skip FastAPI's own layers (kbs/fastpath.py).
        app.add_middleware(
            GuestFastPath,
            routes=_guest_routes(),
            error_types=_HANDLED_ERRORS,
            on_error=_error_handler,
        )
    if "as" in apis:
        app.add_middleware(restful_as.CollapseSlashesMiddleware)
    # Before routing: a control character in the path never names anything of ours.
    app.add_middleware(_ControlCharacterMiddleware)
    app.add_middleware(_CatchAllMiddleware)
    # Outside the catch-all, so answers it turns into 500s are counted too.
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    # Every answer, the catch-all's 500s included, carries X-Request-Id.
    app.add_middleware(RequestIdMiddleware, entropy=entropy)
    prefix = settings.http_server.path_prefix
    if prefix is not None:
        # Outermost, so the prefix is gone before anything else sees the path.
        app.add_middleware(PathPrefixMiddleware, prefix=prefix)
        _logger.info("serving under %s as well as at /", prefix)


#: Our exception types, answered with their error body (kbs/errors.py ``describe``).
_HANDLED_ERRORS: Final = (KbsError, AttestationError, PolicyError, StorageError)

#: The guest protocol's endpoints, served by :class:`GuestFastPath`.
_GUEST_ENDPOINTS: Final = frozenset(
    {("POST", auth.PATH), ("POST", attest.PATH), ("GET", resource.GUEST_PATH)}
)


def _guest_routes() -> list[APIRoute]:
    routes = [
        route
        for router in (auth.router, attest.router, resource.router)
        for route in router.routes
        if isinstance(route, APIRoute)
        and any((method, route.path) in _GUEST_ENDPOINTS for method in route.methods or ())
    ]
    assert len(routes) == len(_GUEST_ENDPOINTS), "a guest route is missing"
    return routes


def _mount_routes(app: FastAPI, apis: Collection[ApiName]) -> None:
    if "kbs" in apis:
        app.include_router(auth.router)
        app.include_router(attest.router)
        app.include_router(resource.router)
        app.include_router(admin.router)
        app.include_router(keyadmin.router)
    app.include_router(wellknown.router)
    app.include_router(metrics_routes.router)
    if "kbs" in apis:
        _add_fallback_routes(app)
    if "as" in apis:
        # At the root (where /healthz and the JWK Set are wellknown's), and under /as
        # for load balancers that keep the prefix.
        app.include_router(restful_as.router, tags=["attestation service"])
        for router in (restful_as.router, restful_as.prefixed_router):
            app.include_router(router, prefix=restful_as.PREFIX, include_in_schema=False)


def _add_fallback_routes(app: FastAPI) -> None:
    async def empty_path() -> Response:
        raise InvalidRequestPathError("Request path /kbs/v0/ is invalid")

    async def unknown_plugin(plugin: str) -> Response:
        raise PluginNotFoundError(f"Plugin {plugin} not found")

    async def unknown_plugin_path(plugin: str, rest: str) -> Response:
        del rest
        raise PluginNotFoundError(f"Plugin {plugin} not found")

    kwargs: dict[str, Any] = {"methods": _ALL_METHODS, "include_in_schema": False}
    app.add_api_route("/kbs/v0/", empty_path, **kwargs)
    app.add_api_route("/kbs/v0/{plugin}", unknown_plugin, **kwargs)
    app.add_api_route("/kbs/v0/{plugin}/{rest:path}", unknown_plugin_path, **kwargs)


def _error_response(
    method: str, path: str, info: ErrorInfo, headers: dict[str, str] | None = None
) -> Response:
    """``{type, detail}`` plus our ``request_id`` member (guests also see it in ``detail``)."""
    request_id = current_request_id()
    detail = info.detail
    if request_id is not None and is_guest_request(method, path):
        detail = f"{detail} (request id {request_id})"
    body: dict[str, Any] = {"type": info.type, "detail": detail}
    if request_id is not None:
        body["request_id"] = request_id
    return json_response(body, status_code=info.status, headers=headers)


async def _error_handler(request: Request, exc: Exception) -> Response:
    info = describe(exc)
    if info.status >= 500:  # noqa: PLR2004
        _logger.error(
            "%s %s failed: %s (request id %s)",
            request.method,
            request.url.path,
            info.variant,
            current_request_id(),
            exc_info=exc,
        )
    else:
        _logger.info(
            "%s %s -> %d %s: %s (request id %s)",
            request.method,
            request.url.path,
            info.status,
            info.variant,
            info.detail,
            current_request_id(),
        )
    headers = None
    if isinstance(exc, RateLimitedError):
        headers = {"retry-after": str(exc.retry_after_s)}
    return _error_response(request.method, request.url.path, info, headers)


#: Variants of the answers the router itself gives (no route; a route, but not that method).
_ROUTING_VARIANTS: Final = {404: "PluginNotFound", 405: "MethodNotAllowed"}


async def _routing_error_handler(request: Request, exc: Exception) -> Response:
    """The router's own 404/405 answers in our error body, like every other error."""
    assert isinstance(exc, StarletteHTTPException)
    variant = _ROUTING_VARIANTS.get(exc.status_code, "InvalidRequest")
    detail = "no endpoint at this path" if exc.status_code == 404 else str(exc.detail)  # noqa: PLR2004
    info = ErrorInfo(status=exc.status_code, variant=variant, detail=detail)
    headers = dict(exc.headers) if exc.headers else None
    return _error_response(request.method, request.url.path, info, headers)


#: C0 controls and DEL. No endpoint, resource path, policy or reference value id has one.
_CONTROL_CHARACTERS: Final = re.compile(r"[\x00-\x1f\x7f]")


class _ControlCharacterMiddleware:
    """Answer 404 ``InvalidRequestPath`` for a path with a control character in it.

    The router's patterns end in ``$``, which also matches before a final newline, so
    ``/kbs/v0/resource/a/b/c%0A`` would otherwise act on ``a/b/c``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _CONTROL_CHARACTERS.search(scope["path"]):
            info = describe(InvalidRequestPathError("request path contains a control character"))
            response = _error_response(str(scope.get("method")), scope["path"], info)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class _CatchAllMiddleware:
    """Turns an unexpected exception into our error body (500), logging the trace."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            _logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            info = describe(exc)
            response = _error_response(str(scope.get("method")), str(scope.get("path")), info)
            await response(scope, receive, send)


# --------------------------------------------------------------------------- start-up


async def _start(
    settings: KbsSettings,
    clock: Clock,
    entropy: Entropy,
    extra_verifiers: Sequence[Verifier],
    metrics: Metrics,
) -> tuple[KbsState, list[asyncio.Task[None]]]:
    at = clock.now()
    _warn_insecure(settings)
    url = settings.database_url
    if settings.database.migrate_on_start:
        await asyncio.to_thread(db.migrate, url, connect_timeout_s=settings.database.timeout_s)
    engine = db.make_async_engine(
        url,
        pool_size=settings.database.pool_size,
        timeout_s=settings.database.timeout_s,
        statement_timeout_s=settings.database.statement_timeout_s,
    )
    try:
        state = await _build_state(
            settings=settings,
            clock=clock,
            entropy=entropy,
            extra_verifiers=extra_verifiers,
            engine=engine,
            at=at,
            metrics=metrics,
        )
    except BaseException:
        await engine.dispose()
        raise
    tasks = [asyncio.create_task(_sweep_sessions(state), name="kbs-session-sweeper")]
    if state.tdx is not None:
        tasks.append(
            asyncio.create_task(state.tdx.refresh_forever(clock), name="kbs-collateral-refresh")
        )
    return state, tasks


async def _build_state(
    *,
    settings: KbsSettings,
    clock: Clock,
    entropy: Entropy,
    extra_verifiers: Sequence[Verifier],
    engine: Any,
    at: dt.datetime,
    metrics: Metrics,
) -> KbsState:
    # One plain-SQL connection set for every hot store (kbs/hotsql.py).
    sql = hotsql.for_engine(engine, timeout_s=settings.database.timeout_s)
    sessions = SessionStore(
        engine, max_unattested=settings.attestation_service.max_unattested_sessions, sql=sql
    )
    policies = PolicyStore(engine, sql=sql)
    reference_values = ReferenceValueStore(engine, sql=sql)
    policy_engine = RegoEngine()

    # Default policies are installed once; uploads survive restarts.
    for policy_id, text in DEFAULT_ATTESTATION_POLICIES.items():
        await policies.set(ATTESTATION_NAMESPACE, policy_id, text, at=at, overwrite=False)
    resource_policy = DEFAULT_RESOURCE_POLICY
    legacy = settings.policy_engine
    if legacy is not None and legacy.policy_path is not None:
        resource_policy = legacy.policy_path.read_text()
        policy_engine.validate(resource_policy)
    await policies.set(
        RESOURCE_NAMESPACE, DEFAULT_RESOURCE_POLICY_ID, resource_policy, at=at, overwrite=False
    )

    signer = await _build_signer(settings, engine, at, entropy)
    simple_signer = await _build_simple_signer(settings, engine, at, entropy)
    _logger.info("token signer key ids: EAR %s, Simple %s", signer.kid, simple_signer.kid)
    token_verifier = TokenVerifier(
        # Tokens of both profiles this deployment issues are accepted (passport mode).
        own_keys=[signer.public_key, simple_signer.public_key],
        trusted_certs=_load_certs(settings.attestation_token.trusted_certs_paths),
        trusted_jwks=_load_trusted_jwks(settings.attestation_token.trusted_jwk_sets),
        insecure_header_jwk=settings.attestation_token.insecure_header_jwk,
        extra_teekey_paths=settings.attestation_token.extra_teekey_paths,
    )

    verifiers: list[Verifier] = list(extra_verifiers)
    if settings.attestation_service.insecure_allow_sample_evidence:
        verifiers += [SampleVerifier(), SampleDeviceVerifier()]
    tdx: TdxService | None = None
    if not any(v.tee == TdxVerifier.tee for v in verifiers):
        tdx = await build_tdx_service(
            settings.attestation_service.verifier_config.dcap_verifier,
            engine=engine,
            observer=metrics,
        )
    if tdx is not None:
        verifiers.append(tdx.verifier)
    # Every verifier is timed (kbs_evidence_verification_seconds; for tdx, DCAP).
    registry = VerifierRegistry(TimedVerifier(v, metrics) for v in verifiers)
    _logger.info("evidence verifiers enabled: %s", ", ".join(registry.tees) or "none")

    admin_authorizer = build_admin_authorizer(settings.admin)
    # Remote identity provider keys: fetched once now (a provider that is down is logged
    # and retried), then refreshed in the background until the app stops.
    await admin_authorizer.start()

    attestation = AttestationService(
        verifiers=registry,
        engine=policy_engine,
        policies=policies,
        reference_values=reference_values,
        signer=signer,
        broker=settings.attestation_service.attestation_token_broker,
        simple_signer=simple_signer,
    )
    return KbsState(
        settings=settings,
        clock=clock,
        entropy=entropy,
        engine=engine,
        sessions=sessions,
        policies=policies,
        reference_values=reference_values,
        policy_engine=policy_engine,
        signer=signer,
        token_verifier=token_verifier,
        attestation=attestation,
        resources=build_resource_router(
            settings,
            engine=engine,
            clock=clock.now,
            entropy=entropy,
            kms_observer=metrics,
            read_row=sql.fetch_one,
        ),
        admin=admin_authorizer,
        simple_signer=simple_signer,
        rate_limiter=RateLimiter.from_settings(settings.rate_limit),
        trusted_proxies=TrustedProxies(settings.http_server.trusted_proxies),
        audit=AuditLog(
            engine,
            value_key=await load_or_create_audit_key(engine, at=at, entropy=entropy),
            sql=sql,
        ),
        release_policies=ReleasePolicyStore(engine, sql=sql),
        tdx=tdx,
        hot_sql=sql,
    )


def _serial(entropy: Entropy) -> int:
    # A positive serial of at most 127 bits (RFC 5280 allows 20 octets).
    return (int.from_bytes(entropy(16), "big") >> 1) or 1


async def _build_signer(
    settings: KbsSettings, engine: Any, at: dt.datetime, entropy: Entropy
) -> TokenSigner:
    broker = settings.attestation_service.attestation_token_broker
    signer_settings = broker.signer
    if signer_settings is None:
        # Generated once and shared through the database, with a self-signed certificate
        # so relying parties that want an x5c chain (TNG >= v2.4) get one.
        key = await load_or_create_signing_key(engine, at=at)
        cert = await load_or_create_certificate(
            engine,
            key_name=TOKEN_SIGNING_KEY,
            public_key=key.public_key(),
            create=lambda: self_signed_certificate(
                key,
                common_name=f"{broker.issuer_name} EAR token signer",
                at=at,
                serial=_serial(entropy),
            ),
            at=at,
        )
        return TokenSigner(key, cert_chain=[cert], x5c_encoding=broker.x5c_encoding)
    loaded = serialization.load_pem_private_key(
        signer_settings.key_path.read_bytes(), password=None
    )
    if isinstance(loaded, rsa.RSAPrivateKey):
        raise ValueError(
            "attestation_token_broker.signer.key_path holds an RSA key; the EAR signer "
            "needs EC P-256 (an RSA key for Simple tokens goes in simple_signer)"
        )
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise ValueError("attestation_token_broker.signer.key_path must hold an EC P-256 key")
    return TokenSigner(
        loaded,
        cert_chain=_load_chain(signer_settings.cert_path),
        cert_url=signer_settings.cert_url,
        x5c_encoding=broker.x5c_encoding,
    )


async def _build_simple_signer(
    settings: KbsSettings, engine: Any, at: dt.datetime, entropy: Entropy
) -> SimpleTokenSigner:
    broker = settings.attestation_service.attestation_token_broker
    signer_settings = broker.simple_signer
    if signer_settings is None:
        key = await load_or_create_rsa_signing_key(engine, at=at)
        cert = await load_or_create_certificate(
            engine,
            key_name=SIMPLE_TOKEN_SIGNING_KEY,
            public_key=key.public_key(),
            create=lambda: self_signed_certificate(
                key,
                common_name=f"{broker.issuer_name} Simple token signer",
                at=at,
                serial=_serial(entropy),
            ),
            at=at,
        )
        return SimpleTokenSigner(key, cert_chain=[cert], x5c_encoding=broker.x5c_encoding)
    loaded = serialization.load_pem_private_key(
        signer_settings.key_path.read_bytes(), password=None
    )
    if not isinstance(loaded, rsa.RSAPrivateKey):
        raise ValueError(
            "attestation_token_broker.simple_signer.key_path must hold an RSA key "
            "(2048 bits or more)"
        )
    return SimpleTokenSigner(
        loaded,
        cert_chain=_load_chain(signer_settings.cert_path),
        cert_url=signer_settings.cert_url,
        x5c_encoding=broker.x5c_encoding,
    )


def _load_chain(path: Path | None) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes()) if path is not None else []


def _load_certs(paths: Sequence[Path]) -> list[x509.Certificate]:
    certs: list[x509.Certificate] = []
    for path in paths:
        certs.extend(x509.load_pem_x509_certificates(path.read_bytes()))
    return certs


def _load_trusted_jwks(uris: Sequence[str]) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for uri in uris:
        doc = json.loads(read_uri(uri))
        if "jwks_uri" in doc and "keys" not in doc:
            doc = json.loads(read_uri(doc["jwks_uri"]))
        for entry in doc.get("keys", []):
            kid = entry.get("kid") or jwk_thumbprint(entry)
            table[kid] = entry
    return table


def _warn_insecure(settings: KbsSettings) -> None:
    if settings.environment == "development":
        _logger.warning(
            "*** DEVELOPMENT PROFILE: not for production. The software-only 'sample' TEE "
            "proves nothing and is %s. ***",
            "ALLOWED"
            if settings.attestation_service.insecure_allow_sample_evidence
            else "not allowed",
        )
    for name in settings.insecure_settings():
        _logger.warning("insecure setting in effect: %s", name)


async def _sweep_sessions(state: KbsState) -> None:
    delay = SESSION_SWEEP_INTERVAL_S
    while True:
        await asyncio.sleep(delay)
        try:
            purged = await state.sessions.purge_expired(at=state.clock.now())
        except DatabaseUnavailableError:
            delay = min(delay * 2, SESSION_SWEEP_MAX_BACKOFF_S)
            _logger.warning("session sweep failed; retrying in %.0f s", delay, exc_info=True)
            continue
        delay = SESSION_SWEEP_INTERVAL_S
        if purged:
            _logger.debug("purged %d expired sessions", purged)
