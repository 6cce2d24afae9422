# SPDX-License-Identifier: Apache-2.0
"""The ``kbs`` console script: serve, migrate, admin key bootstrap, audit chain checks."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from kbs import __version__

if TYPE_CHECKING:
    from kbs.app import ApiName

_logger = logging.getLogger(__name__)

__all__ = ["app_from_environment", "main"]

#: Set by ``kbs serve --dev`` for its workers: build the embedded development profile.
DEV_PROFILE_ENV: Final = "KBS_SERVE_DEV_DATA_DIR"
#: Set by ``kbs serve`` for its workers: the log level.
LOG_LEVEL_ENV: Final = "KBS_LOG_LEVEL"
#: ``text`` or ``json``: the default of ``--log-format``, and how ``kbs serve`` tells its
#: workers.
LOG_FORMAT_ENV: Final = "KBS_LOG_FORMAT"
#: Set by ``kbs serve --api`` for its workers: which APIs to serve (``all``, ``kbs``, ``as``).
SERVE_API_ENV: Final = "KBS_SERVE_API"
#: ``--api`` choices and the APIs each serves.
_API_CHOICES: Final[dict[str, tuple[ApiName, ...]]] = {
    "all": ("kbs", "as"),
    "kbs": ("kbs",),
    "as": ("as",),
}
#: kbs.metrics.MULTIPROC_DIR_ENV (not imported: it would load the web stack here).
PROMETHEUS_MULTIPROC_DIR_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"


def _default_log_format() -> str:
    return "json" if os.environ.get(LOG_FORMAT_ENV) == "json" else "text"


def _configure_logging(level: str, log_format: str | None = None) -> None:
    from kbs.logs import configure_logging  # noqa: PLC0415 - keep --help fast

    fmt = log_format or _default_log_format()
    configure_logging(level, "json" if fmt == "json" else "text")


def ensure_dev_admin_key(data_dir: Path) -> tuple[Path, Path]:
    """Create (once) the development profile's Ed25519 admin key pair under ``data_dir/admin``."""
    admin_dir = data_dir / "admin"
    admin_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    private_path = admin_dir / "admin.key"
    public_path = admin_dir / "admin.pub"
    if not private_path.exists():
        key = ed25519.Ed25519PrivateKey.generate()
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        public_path.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    return private_path, public_path


def _dev_overrides(data_dir: Path) -> dict[str, Any]:
    from kbs.settings import development_settings  # noqa: PLC0415 - keep --help fast

    _, public_path = ensure_dev_admin_key(data_dir)
    overrides = development_settings(data_dir)
    overrides["admin"] = {
        "authorization_mode": "AuthenticatedAuthorization",
        "authentication": {
            "bearer_jwt": {"identity_providers": [{"public_key_uri": str(public_path)}]}
        },
        "authorization": {
            "regex_acl": {"acls": [{"role": "admin", "allowed_endpoints": "^/kbs/.*$"}]}
        },
    }
    return overrides


def app_from_environment() -> Any:
    """Build the ASGI app from ``$KBS_CONFIG_FILE`` (and the dev profile, if selected).

    This is the app ``kbs serve`` workers run, so it tunes their garbage collector once
    started (:mod:`kbs.gctune`).
    """
    from kbs.app import create_app  # noqa: PLC0415
    from kbs.settings import load_settings  # noqa: PLC0415

    if not logging.getLogger().handlers:
        _configure_logging(os.environ.get(LOG_LEVEL_ENV, "info"))
    dev_dir = os.environ.get(DEV_PROFILE_ENV)
    overrides = _dev_overrides(Path(dev_dir)) if dev_dir else None
    config = os.environ.get("KBS_CONFIG_FILE")
    api = os.environ.get(SERVE_API_ENV, "all")
    if api not in _API_CHOICES:
        raise ValueError(f"{SERVE_API_ENV} must be one of {', '.join(_API_CHOICES)}")
    return create_app(
        load_settings(Path(config) if config else None, overrides=overrides),
        apis=_API_CHOICES[api],
        tune_gc=True,
    )


def _bind(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.set_inheritable(True)
    return sock


def _serve(args: argparse.Namespace) -> int:
    import uvicorn  # noqa: PLC0415
    from uvicorn.config import STARTUP_FAILURE  # noqa: PLC0415
    from uvicorn.supervisors import Multiprocess  # noqa: PLC0415

    from kbs.clock import SystemClock  # noqa: PLC0415
    from kbs.entropy import system_entropy  # noqa: PLC0415
    from kbs.httpserver import HeaderLimitedHttpToolsProtocol, ServerConfig  # noqa: PLC0415
    from kbs.resources import check_resource_backends  # noqa: PLC0415
    from kbs.settings import ConfigError, load_settings  # noqa: PLC0415

    if args.config is None and not args.dev and not os.environ.get("KBS_CONFIG_FILE"):
        print("kbs serve: give --config FILE (or set KBS_CONFIG_FILE), or --dev", file=sys.stderr)
        return 2
    overrides = None
    if args.dev:
        os.environ[DEV_PROFILE_ENV] = str(args.data_dir)
        overrides = _dev_overrides(args.data_dir)
    if args.config is not None:
        os.environ["KBS_CONFIG_FILE"] = str(args.config)
    os.environ[LOG_LEVEL_ENV] = args.log_level
    os.environ[LOG_FORMAT_ENV] = args.log_format
    _configure_logging(args.log_level, args.log_format)
    os.environ[SERVE_API_ENV] = args.api
    try:
        settings = load_settings(args.config, overrides=overrides)
        tls = settings.http_server.tls_files()
        # Open KMS client keys (password) and credential files once, before any worker.
        asyncio.run(
            check_resource_backends(settings, clock=SystemClock().now, entropy=system_entropy)
        )
    except ConfigError as exc:
        print(f"kbs serve: {exc}", file=sys.stderr)
        return 2
    workers = args.workers or settings.http_server.worker_count or os.cpu_count() or 1
    if args.dev:
        private_key, _ = ensure_dev_admin_key(args.data_dir)
        _logger.warning(
            "development admin key: %s (kbs-client ... config --auth-private-key %s ...)",
            private_key,
            private_key,
        )
    addresses = args.listen or settings.http_server.sockets
    sockets = [_bind(addr) for addr in addresses]
    config = ServerConfig(
        "kbs.asgi:app",
        workers=workers,
        log_config=None,
        server_header=False,
        proxy_headers=False,
        # httptools with a bound on the request head (kbs/httpserver.py); uvicorn's own
        # httptools protocol has none and its h11 one stops at 16 KiB.
        http=HeaderLimitedHttpToolsProtocol,
        h11_max_incomplete_event_size=settings.http_server.request_header_size * 1024,
        request_header_timeout_s=settings.http_server.request_header_timeout_s,
        ssl_keyfile=str(tls[0]) if tls else None,
        ssl_certfile=str(tls[1]) if tls else None,
        timeout_graceful_shutdown=10,
    )
    _logger.info(
        "kbs %s serving %s on %s with %d worker(s)",
        __version__,
        {"all": "the KBS and attestation-service APIs", "kbs": "the KBS API only"}.get(
            args.api, "the attestation-service API only"
        ),
        ", ".join(addresses),
        workers,
    )
    server = uvicorn.Server(config)
    if workers > 1:
        with _metrics_dir():
            supervisor = Multiprocess(config, sockets=sockets)
            supervisor.run()
        # A worker whose start-up failed stops the supervisor, which then returns
        # normally; do not exit 0. (One worker: uvicorn itself exits with 3.)
        if any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes):
            return STARTUP_FAILURE
    else:
        server.run(sockets=sockets)
    return 0


@contextlib.contextmanager
def _metrics_dir() -> Iterator[None]:
    """Give the workers a fresh PROMETHEUS_MULTIPROC_DIR, removed afterwards.

    So /metrics adds up every worker's values (kbs/metrics.py). A directory already given
    in the environment is used as it is.
    """
    if os.environ.get(PROMETHEUS_MULTIPROC_DIR_ENV):
        yield
        return
    path = tempfile.mkdtemp(prefix="kbs-metrics-")
    os.environ[PROMETHEUS_MULTIPROC_DIR_ENV] = path
    try:
        yield
    finally:
        del os.environ[PROMETHEUS_MULTIPROC_DIR_ENV]
        shutil.rmtree(path, ignore_errors=True)


def _migrate(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import OperationalError  # noqa: PLC0415

    from kbs import db  # noqa: PLC0415
    from kbs.settings import ConfigError, load_settings  # noqa: PLC0415

    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"kbs migrate: {exc}", file=sys.stderr)
        return 2
    try:
        db.migrate(settings.database_url, connect_timeout_s=settings.database.timeout_s)
    except OperationalError as exc:
        # The driver's message names the host, never the password; no traceback.
        print(f"kbs migrate: database unreachable: {exc.orig}", file=sys.stderr)
        return 1
    print("database schema is current")
    return 0


def _bootstrap_token(key: Any, args: argparse.Namespace, *, kid: str | None) -> str:
    import jwt  # noqa: PLC0415

    from kbs.clock import SystemClock  # noqa: PLC0415

    now = SystemClock().now()
    roles = [r for r in (args.role or "").split(",") if r]
    claims: dict[str, Any] = {
        args.role_claim: roles[0] if len(roles) == 1 and not args.roles_as_list else roles,
        "sub": args.subject,
        "iat": int(now.timestamp()),
        "exp": int((now + dt.timedelta(minutes=args.token_minutes)).timestamp()),
    }
    if args.issuer:
        claims["iss"] = args.issuer
    if args.audience:
        claims["aud"] = [args.audience]
    headers = {"kid": kid} if kid else None
    return jwt.encode(claims, key, algorithm="EdDSA", headers=headers)


def _load_private_key(path: Path) -> ed25519.Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def _admin_keygen(args: argparse.Namespace) -> int:
    from kbs.tokens import jwk_thumbprint  # noqa: PLC0415

    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    private_path, public_path = out / "admin.key", out / "admin.pub"
    jwks_path = out / "admin.jwks.json"
    if private_path.exists() and not args.force:
        print(f"kbs admin-keygen: {private_path} exists (use --force)", file=sys.stderr)
        return 2
    key = ed25519.Ed25519PrivateKey.generate()
    private_path.unlink(missing_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw)}
    kid = jwk_thumbprint(jwk)
    jwks_path.write_text(
        json.dumps({"keys": [{**jwk, "kid": kid, "use": "sig", "alg": "EdDSA"}]}, indent=2) + "\n"
    )
    token = _bootstrap_token(key, args, kid=kid)
    print(f"private key: {private_path}\npublic key:  {public_path}\nJWKS:        {jwks_path}")
    print(f"key id:      {kid}")
    print(f"bootstrap token ({args.role_claim} {args.role}, {args.token_minutes} min):\n{token}")
    return 0


def _healthcheck(args: argparse.Namespace) -> int:
    """Exit 0 when ``args.url`` answers 200 (container HEALTHCHECK; no curl in the image)."""
    import httpx  # noqa: PLC0415

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per probe is noise
    try:
        response = httpx.get(args.url, timeout=args.timeout, verify=not args.insecure)
    except httpx.HTTPError as exc:
        print(f"kbs healthcheck: {args.url}: {type(exc).__name__}", file=sys.stderr)
        return 1
    if response.status_code != 200:  # noqa: PLR2004
        print(f"kbs healthcheck: {args.url}: HTTP {response.status_code}", file=sys.stderr)
        return 1
    return 0


def _admin_token(args: argparse.Namespace) -> int:
    from kbs.tokens import jwk_thumbprint  # noqa: PLC0415

    try:
        key = _load_private_key(args.key)
    except (OSError, ValueError) as exc:
        print(f"kbs admin-token: {exc}", file=sys.stderr)
        return 2
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    kid = jwk_thumbprint({"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw)})
    print(_bootstrap_token(key, args, kid=kid))
    return 0


def _b64url(data: bytes) -> str:
    import base64  # noqa: PLC0415

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _audit_verify(args: argparse.Namespace) -> int:
    from kbs import db  # noqa: PLC0415
    from kbs.audit import verify_chain  # noqa: PLC0415
    from kbs.settings import ConfigError, load_settings  # noqa: PLC0415

    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"kbs audit verify: {exc}", file=sys.stderr)
        return 2
    anchors = []
    for anchor in args.anchor or []:
        seq, sep, digest = anchor.partition(":")
        if not sep or not seq.isdigit() or len(digest) != 64:  # noqa: PLR2004
            print(f"kbs audit verify: --anchor {anchor!r} is not SEQ:HASH", file=sys.stderr)
            return 2
        anchors.append((int(seq), digest))
    engine = db.make_sync_engine(
        args.database_url or settings.database_url, connect_timeout_s=settings.database.timeout_s
    )
    try:
        with engine.connect() as conn:
            report = verify_chain(conn, anchors=anchors)
    finally:
        engine.dispose()
    if args.json:
        print(
            json.dumps(
                {
                    "ok": report.ok,
                    "records": report.records,
                    "head": {"seq": report.head_seq, "hash": report.head_hash},
                    "problems": list(report.problems),
                    "first_bad_seq": report.first_bad_seq,
                }
            )
        )
    else:
        for problem in report.problems:
            print(f"PROBLEM: {problem}")
        verdict = "intact" if report.ok else f"BROKEN at record {report.first_bad_seq}"
        print(f"audit chain {verdict}: {report.records} records")
        print(f"head: {report.head_seq}:{report.head_hash}  (keep a copy; --anchor checks it)")
    return 0 if report.ok else 1


def _add_token_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--role", default="admin", help="role(s) of the token, comma-separated (default admin)"
    )
    parser.add_argument(
        "--role-claim", default="role", help="claim holding the role(s) (default role)"
    )
    parser.add_argument(
        "--roles-as-list", action="store_true", help="put a single role in a list (groups style)"
    )
    parser.add_argument("--subject", default="bootstrap-admin", help="sub claim")
    parser.add_argument("--issuer", help="iss claim of the token")
    parser.add_argument("--audience", help="aud claim of the token")
    parser.add_argument(
        "--token-minutes", type=int, default=15, help="token lifetime, minutes (default 15)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``kbs`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="kbs", description="Key Broker Service (Trustee-compatible) and attestation service."
    )
    parser.add_argument("--version", action="version", version=f"kbs {__version__}")
    parser.add_argument("--log-level", default="info", help="debug, info, warning, error")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--config", type=Path, help="TOML configuration file (or $KBS_CONFIG_FILE)")
    serve.add_argument(
        "--dev",
        action="store_true",
        help="embedded development profile: SQLite and files under --data-dir, plain HTTP on "
        "127.0.0.1:8080, the insecure sample TEE allowed, a generated admin key",
    )
    serve.add_argument("--data-dir", type=Path, default=Path("data"), help="data dir for --dev")
    serve.add_argument("--workers", type=int, help="worker processes (default: CPU count)")
    serve.add_argument(
        "--api",
        choices=sorted(_API_CHOICES),
        default="all",
        help="which APIs to serve: all (default), kbs (/kbs/v0/...), or as (the Trustee "
        "restful-as compatible attestation service at / and /as/); health and the JWK Set "
        "are always served",
    )
    serve.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=_default_log_format(),
        help="text for people (default), or json: one object per line with time, level, "
        f"logger, message and request_id (default from ${LOG_FORMAT_ENV})",
    )
    serve.add_argument(
        "--listen",
        action="append",
        metavar="HOST:PORT",
        help="listen here instead of http_server.sockets (repeatable)",
    )
    serve.set_defaults(func=_serve)

    migrate = sub.add_parser("migrate", help="bring the database schema up to date")
    migrate.add_argument("--config", type=Path, help="TOML configuration file")
    migrate.set_defaults(func=_migrate)

    keygen = sub.add_parser(
        "admin-keygen",
        help="create an Ed25519 admin key pair (PEM and JWKS) and a short-lived admin token",
    )
    keygen.add_argument("--out-dir", type=Path, default=Path("admin"), help="where to write keys")
    keygen.add_argument("--force", action="store_true", help="overwrite existing keys")
    _add_token_options(keygen)
    keygen.set_defaults(func=_admin_keygen)

    health = sub.add_parser(
        "healthcheck", help="exit 0 if the server answers (for container health checks)"
    )
    health.add_argument(
        "--url", default="http://127.0.0.1:8080/healthz", help="URL to GET (default: %(default)s)"
    )
    health.add_argument("--timeout", type=float, default=3.0, help="seconds")
    health.add_argument(
        "--insecure", action="store_true", help="do not verify the TLS certificate (self-signed)"
    )
    health.set_defaults(func=_healthcheck)
    token = sub.add_parser("admin-token", help="sign a short-lived admin token with an admin key")
    token.add_argument("--key", type=Path, required=True, help="Ed25519 private key (PEM)")
    _add_token_options(token)
    token.set_defaults(func=_admin_token)

    audit = sub.add_parser("audit", help="audit trail maintenance")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser(
        "verify", help="check the hash chain of the audit trail (exit 1 if it is broken)"
    )
    verify.add_argument("--config", type=Path, help="TOML configuration file (the database)")
    verify.add_argument("--database-url", help="the database, instead of the configuration's")
    verify.add_argument(
        "--anchor",
        action="append",
        metavar="SEQ:HASH",
        help="a head printed earlier that must still be in the chain (repeatable)",
    )
    verify.add_argument("--json", action="store_true", help="machine-readable report")
    verify.set_defaults(func=_audit_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``kbs`` command line."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.log_level)
    result: int = args.func(args)
    return result
