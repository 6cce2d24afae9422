# SPDX-License-Identifier: Apache-2.0
"""A loopback emulator of Alibaba Cloud KMS: the shared gateway and the instance gateway.

One real HTTP(S) server on ``127.0.0.1`` (ephemeral port, background thread) answers both
protocols and, like the real services, **verifies every request signature** before doing
anything:

Shared gateway (OpenAPI ``2016-01-20``, JSON answers), told apart by the absence of
``x-kms-apiname``:

* ACS3-HMAC-SHA256 (``Authorization: ACS3-HMAC-SHA256 Credential=…,SignedHeaders=…,
  Signature=…``): every ``x-acs-*`` header and ``host`` must be signed, ``x-acs-content-sha256``
  must be the body's SHA-256, ``x-acs-date`` within 15 minutes, the nonce unused, and the
  HMAC over the canonical request must match the AccessKey secret.
* the v2 RPC form (``Signature`` query parameter, HMAC-SHA1 over ``POST&%2F&<params>``
  with key ``secret&``), with ``Timestamp`` and ``SignatureNonce`` checks.
* STS credentials must carry their security token (``x-acs-security-token`` /
  ``SecurityToken``).

Errors use the POP codes: 400 ``IncompleteSignature``, 400 ``SignatureDoesNotMatch``,
404 ``InvalidAccessKeyId.NotFound``, 400 ``InvalidTimeStamp.Expired``, 400
``SignatureNonceUsed``, 400 ``InvalidSecurityToken.MismatchWithAccessKey``; and the KMS
codes 404 ``Forbidden.ResourceNotFound``, 409 ``Rejected.ResourceExist``, 409
``Rejected.ResourceInDeleteWindow``, 429 ``Rejected.Throttling``, 500 ``InternalFailure``
(the KMS API reference's CreateSecret error table).

Instance gateway (``dkms-gcs-0.2``, protobuf answers), told apart by ``x-kms-apiname``: the
headers of research notes 2.4 must be present (400 ``InvalidApiVersion``, ``InvalidApiName``,
``InvalidParam``, ``MissingParameter``), ``Date`` within 15 minutes (400
``RequestTimeTooSkewed``), ``content-sha256`` equal to the body hash, the key id known
(401 ``Unauthorized``) and the RSA PKCS#1 v1.5 SHA-256 signature valid for that client key's
public key (401 ``SignatureNotMatch``). Only ``GetSecretValue`` is served, as by the real
instance API for secrets.

The statuses for a missing secret (404) and for reading a secret scheduled for deletion
(409) are assumptions (research notes section 7); clients must decide on the error code.

STS (``AssumeRoleWithOIDC``, API ``2015-04-01``, as the ACK RRSA credential provider calls
it): an unsigned request whose ``RoleArn``, ``OIDCProviderArn`` and ``OIDCToken`` match a
role registered with :meth:`KmsEmulator.add_oidc_role` gets fresh STS credentials, which
the shared gateway then accepts (400 ``AuthenticationFail.OIDCToken.Invalid`` otherwise).

Secrets are stored with versions and stages (``ACSCurrent``/``ACSPrevious``). Operations:
GetSecretValue (by stage or ``VersionId``), CreateSecret, PutSecretValue, DeleteSecret
(``RecoveryWindowInDays`` / ``ForceDeleteWithoutRecovery``), RestoreSecret, ListSecrets
(paging, ``SecretName`` and ``DKMSInstanceId`` filters), DescribeSecret,
ListSecretVersionIds (``IncludeDeprecated``, paging) and UpdateSecretVersionStage (moving
``ACSCurrent`` hands ``ACSPrevious`` to the version it left, as PutSecretValue does; that
the service does the same is an assumption). Faults can be injected (error answers such as throttling,
latency, connection refused / reset), and every request is recorded.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import email.utils
import hashlib
import hmac
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qsl, quote, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from kbs.clock import SystemClock
from storage_backends.aliyun_kms import _protobuf as pb

_logger = logging.getLogger(__name__)

__all__ = ["KmsEmulator", "RecordedRequest"]

MAX_SKEW = dt.timedelta(minutes=15)
SHARED_API_VERSION = "2016-01-20"
STS_API_VERSION = "2015-04-01"
INSTANCE_API_VERSION = "dkms-gcs-0.2"
_INSTANCE_API_NAMES = {
    "Encrypt",
    "Decrypt",
    "Sign",
    "Verify",
    "GenerateRandom",
    "GenerateDataKey",
    "GenerateDataKeyPair",
    "GetPublicKey",
    "GetSecretValue",
    "AdvanceEncrypt",
    "AdvanceDecrypt",
    "AdvanceGenerateDataKey",
}
_MAX_BODY = 1024 * 1024


class _Reject(Exception):  # noqa: N818 - control flow inside the emulator
    def __init__(
        self, status: int, code: str, message: str = "", *, retry_after_ms: int | None = None
    ) -> None:
        super().__init__(code)
        self.status = status
        self.code = code
        self.message = message or code
        self.retry_after_ms = retry_after_ms


@dataclass
class _Version:
    version_id: str
    data: str
    data_type: str
    stages: set[str]
    create_time: str


@dataclass
class _Secret:
    name: str
    instance_id: str | None
    create_time: str
    versions: list[_Version] = field(default_factory=list)
    planned_delete_time: str | None = None
    update_time: str | None = None

    def updated(self) -> str:
        return self.update_time or self.versions[-1].create_time

    def current(self) -> _Version:
        return next(v for v in self.versions if "ACSCurrent" in v.stages)


@dataclass
class _Fault:
    status: int
    code: str
    remaining: int | None
    gateway: str | None
    action: str | None
    retry_after_ms: int | None


@dataclass(frozen=True)
class RecordedRequest:
    """One request the emulator received."""

    gateway: str  # "shared" or "instance"
    action: str
    status: int
    code: str | None
    signature: str | None  # "ACS3-HMAC-SHA256", "v2" or "RSA_PKCS1_SHA_256"


def _iso(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(text: str) -> dt.datetime | None:
    try:
        return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def _pct(value: str) -> str:
    return quote(value, safe="~")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    emulator: KmsEmulator
    tls: ssl.SSLContext | None

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def drop_connections(self) -> None:
        """Shut down every open connection (keep-alive clients see a reset)."""
        with self.connections_lock:
            connections = list(self.connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:  # noqa: ARG002
        # TLS handshake failures (a client that does not trust our CA) and dropped
        # connections are expected in tests; do not print tracebacks.
        _logger.debug("kms emulator: connection from %s ended with an error", client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        if self.server.tls is not None:
            self.request = self.server.tls.wrap_socket(self.request, server_side=True)
        with self.server.connections_lock:
            self.server.connections.add(self.request)
        super().setup()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.connections_lock:
                self.server.connections.discard(self.request)
            # The TLS socket replaced the accepted one, which socketserver closes; close ours.
            with contextlib.suppress(OSError):
                self.request.close()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002, ARG002 - stdlib
        return

    def do_POST(self) -> None:
        self.server.emulator._serve(self)

    def do_GET(self) -> None:
        self.server.emulator._serve(self)


class KmsEmulator:
    """Both KMS gateways on one loopback port; see the module docstring."""

    def __init__(
        self,
        *,
        tls: ssl.SSLContext | None = None,
        now: Callable[[], dt.datetime] | None = None,
        region_id: str = "cn-hangzhou",
    ) -> None:
        self._tls = tls
        self._now = now or SystemClock().now
        self.region_id = region_id
        self._lock = threading.RLock()
        self._access_keys: dict[str, tuple[str, str | None]] = {}
        self._client_keys: dict[str, rsa.RSAPublicKey] = {}
        self._oidc_roles: dict[tuple[str, str], str] = {}
        self.issued_sts: list[tuple[str, str, str]] = []
        self._secrets: dict[str, _Secret] = {}
        self._nonces: set[str] = set()
        self._faults: list[_Fault] = []
        self._latency = 0.0
        self._down: str | None = None
        self._request_counter = 0
        self.requests: list[RecordedRequest] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> KmsEmulator:
        server = _Server(("127.0.0.1", self.port))
        server.emulator = self
        server.tls = self._tls
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="kms-emulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.drop_connections()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:<port>`` (what the clients take as ``…_endpoint``)."""
        return f"127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ credentials
    def add_access_key(
        self, access_key_id: str, secret: str, security_token: str | None = None
    ) -> None:
        """Accept requests signed with this AccessKey (an STS key when a token is given)."""
        with self._lock:
            self._access_keys[access_key_id] = (secret, security_token)

    def add_oidc_role(self, role_arn: str, oidc_provider_arn: str, oidc_token: str) -> None:
        """Let ``AssumeRoleWithOIDC`` with this role, provider and token issue STS keys."""
        with self._lock:
            self._oidc_roles[(role_arn, oidc_provider_arn)] = oidc_token

    def add_client_key(self, key_id: str, public_key: rsa.RSAPublicKey) -> None:
        """Accept instance-gateway requests signed by this AAP client key."""
        with self._lock:
            self._client_keys[key_id] = public_key

    # ------------------------------------------------------------------ store
    def create_secret(
        self,
        name: str,
        data: str,
        *,
        data_type: str = "text",
        instance_id: str | None = None,
        version_id: str = "v1",
    ) -> None:
        """Create a secret directly (test setup; no request is recorded)."""
        with self._lock:
            created = _iso(self._now())
            secret = _Secret(name=name, instance_id=instance_id, create_time=created)
            secret.versions.append(_Version(version_id, data, data_type, {"ACSCurrent"}, created))
            self._secrets[name] = secret

    def put_value(self, name: str, data: str, *, data_type: str = "text", version_id: str) -> None:
        """Add a version directly (test setup)."""
        with self._lock:
            self._add_version(self._secrets[name], data, data_type, version_id)

    def current(self, name: str) -> tuple[str, str, str] | None:
        """``(data, data_type, version_id)`` of ``ACSCurrent``, or ``None`` if no such secret."""
        with self._lock:
            secret = self._secrets.get(name)
            if secret is None:
                return None
            version = secret.current()
            return version.data, version.data_type, version.version_id

    def versions(self, name: str) -> list[tuple[str, frozenset[str]]]:
        """``(version_id, stages)`` of every version, oldest first."""
        with self._lock:
            return [(v.version_id, frozenset(v.stages)) for v in self._secrets[name].versions]

    def secret_names(self) -> list[str]:
        with self._lock:
            return list(self._secrets)

    def instance_of(self, name: str) -> str | None:
        with self._lock:
            return self._secrets[name].instance_id

    def planned_delete_time(self, name: str) -> str | None:
        with self._lock:
            return self._secrets[name].planned_delete_time

    # ------------------------------------------------------------------ faults
    def inject_error(
        self,
        status: int,
        code: str,
        *,
        times: int | None = 1,
        gateway: str | None = None,
        action: str | None = None,
        retry_after_ms: int | None = None,
    ) -> None:
        """Answer the next ``times`` matching requests (``None``: all) with this error."""
        with self._lock:
            self._faults.append(_Fault(status, code, times, gateway, action, retry_after_ms))

    def throttle(self, *, times: int | None = 1, gateway: str | None = None) -> None:
        """429 ``Rejected.Throttling`` ("QPS Limit Exceeded") for the next ``times`` requests."""
        self.inject_error(429, "Rejected.Throttling", times=times, gateway=gateway)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._latency = 0.0

    def set_latency(self, seconds: float) -> None:
        """Delay every answer by ``seconds``."""
        with self._lock:
            self._latency = seconds

    def go_down(self, mode: str = "refused") -> None:
        """Simulate an outage: ``refused`` closes the port, ``reset`` drops every request."""
        if mode not in {"refused", "reset"}:
            raise ValueError(mode)
        with self._lock:
            self._down = mode
        if mode == "refused":
            self.stop()

    def come_back(self) -> None:
        """End an outage (reopens the same port after ``refused``)."""
        with self._lock:
            mode, self._down = self._down, None
        if mode == "refused":
            self.start()

    # ------------------------------------------------------------------ observation
    def count(
        self, *, action: str | None = None, gateway: str | None = None, status: int | None = None
    ) -> int:
        with self._lock:
            return sum(
                1
                for r in self.requests
                if (action is None or r.action == action)
                and (gateway is None or r.gateway == gateway)
                and (status is None or r.status == status)
            )

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    # ------------------------------------------------------------------ serving
    def _serve(self, handler: _Handler) -> None:
        length = int(handler.headers.get("content-length") or 0)
        if length > _MAX_BODY:
            handler.close_connection = True
            return
        body = handler.rfile.read(length) if length else b""
        with self._lock:
            down, latency = self._down, self._latency
            self._request_counter += 1
            request_id = f"emu-{self._request_counter:08d}"
        if down is not None:
            # Drop the connection without an answer (a pooled keep-alive connection sees a
            # reset; new connections are refused once the port is closed).
            handler.close_connection = True
            with contextlib.suppress(OSError):
                handler.connection.shutdown(socket.SHUT_RDWR)
            return
        if latency:
            time.sleep(latency)
        if "x-kms-apiname" in handler.headers:
            gateway = "instance"
            status, headers, payload, action, code, signature = self._serve_instance(
                handler, body, request_id
            )
        else:
            gateway = "shared"
            status, headers, payload, action, code, signature = self._serve_shared(
                handler, body, request_id
            )
        with self._lock:
            self.requests.append(RecordedRequest(gateway, action, status, code, signature))
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("x-acs-request-id", request_id)
        handler.send_header("content-length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def _raise_fault(self, gateway: str, action: str) -> None:
        with self._lock:
            for fault in self._faults:
                if fault.gateway not in (None, gateway) or fault.action not in (None, action):
                    continue
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                raise _Reject(
                    fault.status, fault.code, "injected fault", retry_after_ms=fault.retry_after_ms
                )

    def _check_time(self, at: dt.datetime | None, status: int, code: str) -> None:
        if at is None or abs(self._now() - at) > MAX_SKEW:
            raise _Reject(status, code, "Request time exceeds server time more than 15 minutes.")

    def _check_nonce(self, nonce: str | None) -> None:
        if not nonce:
            raise _Reject(400, "IncompleteSignature", "The signature nonce is missing.")
        with self._lock:
            if nonce in self._nonces:
                raise _Reject(
                    400, "SignatureNonceUsed", "The request signature nonce has been used."
                )
            self._nonces.add(nonce)

    # ------------------------------------------------------------------ shared gateway
    def _serve_shared(
        self, handler: _Handler, body: bytes, request_id: str
    ) -> tuple[int, dict[str, str], bytes, str, str | None, str | None]:
        split = urlsplit(handler.path)
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        form: dict[str, str] = {}
        if body and "x-www-form-urlencoded" in (handler.headers.get("content-type") or ""):
            form = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        action = handler.headers.get("x-acs-action") or query.get("Action") or "?"
        authorization = handler.headers.get("authorization") or ""
        signature: str | None = None
        if authorization.startswith("ACS3-HMAC-SHA256 "):
            signature = "ACS3-HMAC-SHA256"
        elif "Signature" in query:
            signature = "v2"

        def verify_and_run() -> dict[str, Any]:
            if query.get("Action") == "AssumeRoleWithOIDC":
                # STS: anonymous; the OIDC token is the credential.
                return self._assume_role_with_oidc(query, request_id)
            version = self._verify_shared_signature(
                handler, signature, path=split.path or "/", query=query, form=form, body=body
            )
            if version != SHARED_API_VERSION:
                raise _Reject(400, "InvalidVersion", "Specified parameter Version is not valid.")
            self._raise_fault("shared", action)
            return self._shared_action(action, {**query, **form})

        try:
            result = verify_and_run()
        except _Reject as reject:
            document = {
                "RequestId": request_id,
                "HostId": f"kms.{self.region_id}.aliyuncs.com",
                "Code": reject.code,
                "Message": reject.message,
                "HttpStatus": reject.status,
            }
            headers = {"content-type": "application/json;charset=utf-8"}
            if reject.retry_after_ms is not None:
                headers["x-acs-retry-after"] = str(reject.retry_after_ms)
            return (
                reject.status,
                headers,
                json.dumps(document).encode(),
                action,
                reject.code,
                signature,
            )
        result["RequestId"] = request_id
        headers = {"content-type": "application/json;charset=utf-8"}
        return 200, headers, json.dumps(result).encode(), action, None, signature

    def _verify_shared_signature(
        self,
        handler: _Handler,
        signature: str | None,
        *,
        path: str,
        query: Mapping[str, str],
        form: Mapping[str, str],
        body: bytes,
    ) -> str | None:
        """Check the request signature; return the API version the request names."""
        if signature == "ACS3-HMAC-SHA256":
            authorization = handler.headers.get("authorization") or ""
            self._verify_acs3(handler, path, query, body, authorization)
            return handler.headers.get("x-acs-version")
        if signature == "v2":
            self._verify_rpc_v2(handler.command, query, form)
            return query.get("Version")
        raise _Reject(400, "IncompleteSignature", "The request signature is missing.")

    def _assume_role_with_oidc(self, query: Mapping[str, str], request_id: str) -> dict[str, Any]:
        if query.get("Version") != STS_API_VERSION:
            raise _Reject(400, "InvalidVersion", "Specified parameter Version is not valid.")
        self._check_time(_parse_iso(query.get("Timestamp") or ""), 400, "InvalidTimeStamp.Expired")
        key = (query.get("RoleArn") or "", query.get("OIDCProviderArn") or "")
        with self._lock:
            expected = self._oidc_roles.get(key)
            if expected is None or not hmac.compare_digest(expected, query.get("OIDCToken") or ""):
                raise _Reject(
                    400, "AuthenticationFail.OIDCToken.Invalid", "The OIDC token is invalid."
                )
            serial = hashlib.sha256(f"{request_id}{key}".encode()).hexdigest()[:16]
            access_key_id = f"STS.emu-oidc-{serial}"
            secret = f"emu-oidc-secret-{serial}"
            token = f"CAISemuOidcToken{serial}"
            self._access_keys[access_key_id] = (secret, token)
            self.issued_sts.append((access_key_id, secret, token))
        return {
            "AssumedRoleUser": {
                "Arn": f"{key[0]}/{query.get('RoleSessionName', '')}",
                "AssumedRoleId": f"3{serial}:{query.get('RoleSessionName', '')}",
            },
            "Credentials": {
                "AccessKeyId": access_key_id,
                "AccessKeySecret": secret,
                "SecurityToken": token,
                "Expiration": _iso(self._now() + dt.timedelta(hours=1)),
            },
        }

    def _signing_secret(self, access_key_id: str | None) -> tuple[str, str | None]:
        with self._lock:
            entry = self._access_keys.get(access_key_id or "")
        if entry is None:
            raise _Reject(404, "InvalidAccessKeyId.NotFound", "Specified access key is not found.")
        return entry

    def _verify_acs3(
        self,
        handler: _Handler,
        path: str,
        query: Mapping[str, str],
        body: bytes,
        authorization: str,
    ) -> None:
        # 1. Parse "ACS3-HMAC-SHA256 Credential=…,SignedHeaders=…,Signature=…".
        parts: dict[str, str] = {}
        for item in authorization.removeprefix("ACS3-HMAC-SHA256 ").split(","):
            key, sep, value = item.strip().partition("=")
            if not sep:
                raise _Reject(400, "IncompleteSignature", "The request signature is malformed.")
            parts[key] = value
        if not {"Credential", "SignedHeaders", "Signature"} <= parts.keys():
            raise _Reject(400, "IncompleteSignature", "The request signature is malformed.")
        secret, token = self._signing_secret(parts["Credential"])
        # 2. Every x-acs-* header and host must be signed.
        signed = parts["SignedHeaders"].split(";")
        present = {name.lower() for name in handler.headers}
        required = {"host"} | {name for name in present if name.startswith("x-acs-")}
        if not required <= set(signed) or not set(signed) <= present:
            raise _Reject(
                400, "IncompleteSignature", "All x-acs-* headers and host must be signed."
            )
        # 3. The payload hash must be the body's.
        if handler.headers.get("x-acs-content-sha256") != hashlib.sha256(body).hexdigest():
            raise _Reject(400, "SignatureDoesNotMatch", "The payload hash does not match.")
        # 4. Time and nonce.
        self._check_time(
            _parse_iso(handler.headers.get("x-acs-date") or ""), 400, "InvalidTimeStamp.Expired"
        )
        self._check_nonce(handler.headers.get("x-acs-signature-nonce"))
        # 5. STS keys must present their token.
        if token != handler.headers.get("x-acs-security-token"):
            raise _Reject(
                400,
                "InvalidSecurityToken.MismatchWithAccessKey",
                "The security token does not match.",
            )
        # 6. Rebuild the canonical request and compare the HMAC.
        canonical_query = "&".join(f"{_pct(k)}={_pct(v)}" for k, v in sorted(query.items()))
        canonical_headers = "".join(
            f"{name}:{','.join(sorted(v.strip() for v in handler.headers.get_all(name) or []))}\n"
            for name in signed
        )
        canonical_request = "\n".join(
            [
                handler.command,
                path,
                canonical_query,
                canonical_headers,
                parts["SignedHeaders"],
                hashlib.sha256(body).hexdigest(),
            ]
        )
        string_to_sign = (
            "ACS3-HMAC-SHA256\n" + hashlib.sha256(canonical_request.encode()).hexdigest()
        )
        expected = hmac.new(secret.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, parts["Signature"]):
            raise _Reject(
                400,
                "SignatureDoesNotMatch",
                "Specified signature is not matched with our calculation.",
            )

    def _verify_rpc_v2(
        self, method: str, query: Mapping[str, str], form: Mapping[str, str]
    ) -> None:
        if query.get("SignatureMethod") != "HMAC-SHA1" or query.get("SignatureVersion") != "1.0":
            raise _Reject(400, "IncompleteSignature", "Unsupported signature method.")
        secret, token = self._signing_secret(query.get("AccessKeyId"))
        self._check_time(_parse_iso(query.get("Timestamp") or ""), 400, "InvalidTimeStamp.Expired")
        self._check_nonce(query.get("SignatureNonce"))
        if token != query.get("SecurityToken"):
            raise _Reject(
                400,
                "InvalidSecurityToken.MismatchWithAccessKey",
                "The security token does not match.",
            )
        params = {k: v for k, v in {**query, **form}.items() if k != "Signature"}
        canonical = "&".join(f"{_pct(k)}={_pct(v)}" for k, v in sorted(params.items()))
        string_to_sign = f"{method}&%2F&{_pct(canonical)}"
        digest = hmac.new((secret + "&").encode(), string_to_sign.encode(), hashlib.sha1).digest()
        if not hmac.compare_digest(base64.b64encode(digest).decode(), query["Signature"]):
            raise _Reject(
                400,
                "SignatureDoesNotMatch",
                "Specified signature is not matched with our calculation.",
            )

    def _shared_action(self, action: str, params: Mapping[str, str]) -> dict[str, Any]:
        handlers: dict[str, Callable[[Mapping[str, str]], dict[str, Any]]] = {
            "GetSecretValue": self._op_get,
            "CreateSecret": self._op_create,
            "PutSecretValue": self._op_put,
            "DeleteSecret": self._op_delete,
            "RestoreSecret": self._op_restore,
            "ListSecrets": self._op_list,
            "DescribeSecret": self._op_describe,
            "ListSecretVersionIds": self._op_list_versions,
            "UpdateSecretVersionStage": self._op_update_stage,
        }
        operation = handlers.get(action)
        if operation is None:
            raise _Reject(404, "InvalidAction.NotFound", f"Specified api {action} is not found.")
        with self._lock:
            return operation(params)

    def _required(self, params: Mapping[str, str], name: str) -> str:
        value = params.get(name)
        if not value:
            raise _Reject(400, "MissingParameter", f"The parameter {name} is required.")
        return value

    def _existing(self, name: str, *, allow_deleting: bool = False) -> _Secret:
        secret = self._secrets.get(name)
        if secret is None:
            raise _Reject(404, "Forbidden.ResourceNotFound", "The resource is not found.")
        if secret.planned_delete_time is not None and not allow_deleting:
            raise _Reject(
                409, "Rejected.ResourceInDeleteWindow", "The secret is planned to be deleted."
            )
        return secret

    def _add_version(self, secret: _Secret, data: str, data_type: str, version_id: str) -> _Version:
        if any(v.version_id == version_id for v in secret.versions):
            raise _Reject(409, "Rejected.ResourceExist", "The resource already exists.")
        for version in secret.versions:
            version.stages.discard("ACSPrevious")
            if "ACSCurrent" in version.stages:
                version.stages.discard("ACSCurrent")
                version.stages.add("ACSPrevious")
        version = _Version(version_id, data, data_type, {"ACSCurrent"}, _iso(self._now()))
        secret.versions.append(version)
        secret.update_time = version.create_time
        return version

    def _secret_document(self, secret: _Secret, version: _Version) -> dict[str, Any]:
        return {
            "SecretName": secret.name,
            "SecretType": "Generic",
            "SecretData": version.data,
            "SecretDataType": version.data_type,
            "VersionId": version.version_id,
            "CreateTime": version.create_time,
            "VersionStages": {"VersionStage": sorted(version.stages)},
        }

    def _op_get(self, params: Mapping[str, str]) -> dict[str, Any]:
        secret = self._existing(self._required(params, "SecretName"))
        stage = params.get("VersionStage") or "ACSCurrent"
        version_id = params.get("VersionId")
        for version in secret.versions:
            if (version_id and version.version_id == version_id) or (
                not version_id and stage in version.stages
            ):
                return self._secret_document(secret, version)
        raise _Reject(404, "Forbidden.ResourceNotFound", "The secret version is not found.")

    def _op_create(self, params: Mapping[str, str]) -> dict[str, Any]:
        name = self._required(params, "SecretName")
        data = self._required(params, "SecretData")
        version_id = self._required(params, "VersionId")
        existing = self._secrets.get(name)
        if existing is not None:
            if existing.planned_delete_time is not None:
                raise _Reject(
                    409, "Rejected.ResourceInDeleteWindow", "The secret is planned to be deleted."
                )
            raise _Reject(409, "Rejected.ResourceExist", "The resource already exists.")
        if params.get("SecretType", "Generic") != "Generic":
            raise _Reject(400, "InvalidParameter", "Only generic secrets are emulated.")
        created = _iso(self._now())
        secret = _Secret(
            name=name, instance_id=params.get("DKMSInstanceId") or None, create_time=created
        )
        data_type = params.get("SecretDataType") or "text"
        secret.versions.append(_Version(version_id, data, data_type, {"ACSCurrent"}, created))
        self._secrets[name] = secret
        return {
            "Arn": f"acs:kms:{self.region_id}:1234567890:secret/{name}",
            "SecretName": name,
            "VersionId": version_id,
            "SecretType": "Generic",
        }

    def _op_put(self, params: Mapping[str, str]) -> dict[str, Any]:
        secret = self._existing(self._required(params, "SecretName"))
        version = self._add_version(
            secret,
            self._required(params, "SecretData"),
            params.get("SecretDataType") or "text",
            self._required(params, "VersionId"),
        )
        return {
            "SecretName": secret.name,
            "VersionId": version.version_id,
            "VersionStages": {"VersionStage": sorted(version.stages)},
        }

    def _op_delete(self, params: Mapping[str, str]) -> dict[str, Any]:
        name = self._required(params, "SecretName")
        force = params.get("ForceDeleteWithoutRecovery", "false").lower() == "true"
        secret = self._existing(name, allow_deleting=force)
        if force:
            del self._secrets[name]
            return {"SecretName": name}
        days_text = params.get("RecoveryWindowInDays") or "30"
        if not days_text.isdigit() or not 7 <= int(days_text) <= 30:
            raise _Reject(400, "InvalidParameter", "RecoveryWindowInDays must be 7 to 30.")
        secret.planned_delete_time = _iso(self._now() + dt.timedelta(days=int(days_text)))
        return {"SecretName": name, "PlannedDeleteTime": secret.planned_delete_time}

    def _op_restore(self, params: Mapping[str, str]) -> dict[str, Any]:
        secret = self._existing(self._required(params, "SecretName"), allow_deleting=True)
        secret.planned_delete_time = None
        return {"SecretName": secret.name}

    def _op_list(self, params: Mapping[str, str]) -> dict[str, Any]:
        page_number = int(params.get("PageNumber") or 1)
        page_size = int(params.get("PageSize") or 10)
        if page_number < 1 or not 1 <= page_size <= 100:
            raise _Reject(400, "InvalidParameter", "PageNumber or PageSize is out of range.")
        secrets = list(self._secrets.values())
        for condition in json.loads(params.get("Filters") or "[]"):
            values = set(condition.get("Values", []))
            if condition.get("Key") == "SecretName":
                secrets = [s for s in secrets if s.name in values]
            elif condition.get("Key") == "DKMSInstanceId":
                secrets = [s for s in secrets if s.instance_id in values]
            else:
                raise _Reject(400, "InvalidParameter", "Unsupported filter key.")
        start = (page_number - 1) * page_size
        page = secrets[start : start + page_size]
        entries = []
        for secret in page:
            entry: dict[str, Any] = {
                "SecretName": secret.name,
                "SecretType": "Generic",
                "CreateTime": secret.create_time,
                "UpdateTime": secret.updated(),
            }
            if secret.planned_delete_time:
                entry["PlannedDeleteTime"] = secret.planned_delete_time
            entries.append(entry)
        return {
            "PageNumber": page_number,
            "PageSize": page_size,
            "TotalCount": len(secrets),
            "SecretList": {"Secret": entries},
        }

    def _op_describe(self, params: Mapping[str, str]) -> dict[str, Any]:
        secret = self._existing(self._required(params, "SecretName"), allow_deleting=True)
        document: dict[str, Any] = {
            "SecretName": secret.name,
            "SecretType": "Generic",
            "CreateTime": secret.create_time,
            "UpdateTime": secret.updated(),
            "Arn": f"acs:kms:{self.region_id}:1234567890:secret/{secret.name}",
        }
        if secret.instance_id:
            document["DKMSInstanceId"] = secret.instance_id
        if secret.planned_delete_time:
            document["PlannedDeleteTime"] = secret.planned_delete_time
        return document

    def _op_list_versions(self, params: Mapping[str, str]) -> dict[str, Any]:
        secret = self._existing(self._required(params, "SecretName"))
        page_number = int(params.get("PageNumber") or 1)
        page_size = int(params.get("PageSize") or 20)
        if page_number < 1 or not 1 <= page_size <= 100:
            raise _Reject(400, "InvalidParameter", "PageNumber or PageSize is out of range.")
        include_deprecated = params.get("IncludeDeprecated", "false").lower() == "true"
        versions = [v for v in secret.versions if include_deprecated or v.stages]
        start = (page_number - 1) * page_size
        return {
            "SecretName": secret.name,
            "PageNumber": page_number,
            "PageSize": page_size,
            "TotalCount": len(versions),
            "VersionIds": {
                "VersionId": [
                    {
                        "VersionId": v.version_id,
                        "CreateTime": v.create_time,
                        "VersionStages": {"VersionStage": sorted(v.stages)},
                    }
                    for v in versions[start : start + page_size]
                ]
            },
        }

    def _op_update_stage(self, params: Mapping[str, str]) -> dict[str, Any]:
        secret = self._existing(self._required(params, "SecretName"))
        stage = self._required(params, "VersionStage")
        move_to = params.get("MoveToVersion")
        remove_from = params.get("RemoveFromVersion")
        by_id = {v.version_id: v for v in secret.versions}
        for version_id in (move_to, remove_from):
            if version_id and version_id not in by_id:
                raise _Reject(404, "Forbidden.ResourceNotFound", "The secret version is not found.")
        holder = next((v for v in secret.versions if stage in v.stages), None)
        if stage in {"ACSCurrent", "ACSPrevious"}:
            if not move_to:
                raise _Reject(400, "InvalidParameter", f"{stage} cannot be removed.")
            if holder is not None and (remove_from is None or by_id[remove_from] is not holder):
                raise _Reject(
                    400, "InvalidParameter", "RemoveFromVersion must be the version holding it."
                )
        if remove_from:
            by_id[remove_from].stages.discard(stage)
        if move_to:
            target = by_id[move_to]
            if stage == "ACSCurrent" and holder is not None and holder is not target:
                for version in secret.versions:
                    version.stages.discard("ACSPrevious")
                holder.stages.add("ACSPrevious")
            target.stages.add(stage)
        secret.update_time = _iso(self._now())
        return {"SecretName": secret.name}

    # ------------------------------------------------------------------ instance gateway
    def _serve_instance(
        self, handler: _Handler, body: bytes, request_id: str
    ) -> tuple[int, dict[str, str], bytes, str, str | None, str | None]:
        api_name = handler.headers.get("x-kms-apiname") or "?"
        headers = {"content-type": "application/x-protobuf"}
        signature = handler.headers.get("x-kms-signaturemethod")

        def verify_and_run() -> bytes:
            self._verify_instance_headers(handler, body)
            self._verify_instance_signature(handler)
            self._raise_fault("instance", api_name)
            if api_name != "GetSecretValue":
                raise _Reject(400, "UnsupportedOperation", "Rejected.UnsupportedOperation")
            return self._instance_get(body)

        try:
            payload = verify_and_run()
        except _Reject as reject:
            error = pb.encode(
                [(1, reject.status), (2, reject.code), (3, reject.message), (4, request_id)]
            )
            return reject.status, headers, error, api_name, reject.code, signature
        return 200, headers, payload, api_name, None, signature

    def _verify_instance_headers(self, handler: _Handler, body: bytes) -> None:
        h = handler.headers
        # 1. Protocol headers.
        if h.get("x-kms-apiversion") != INSTANCE_API_VERSION:
            raise _Reject(
                400,
                "InvalidApiVersion",
                f'The ApiVersion "{h.get("x-kms-apiversion")}" is invalid.',
            )
        if h.get("x-kms-apiname") not in _INSTANCE_API_NAMES:
            raise _Reject(
                400, "InvalidApiName", f'The ApiName "{h.get("x-kms-apiname")}" is invalid.'
            )
        if h.get("x-kms-signaturemethod") != "RSA_PKCS1_SHA_256":
            raise _Reject(400, "InvalidParam", "The Param x-kms-signaturemethod is invalid.")
        key_id = h.get("x-kms-acccesskeyid")
        if not key_id:
            raise _Reject(
                400,
                "MissingParameter",
                "Parameter x-kms-acccesskeyid does not exist in http header or body.",
            )
        # 2. Date: RFC 1123, within 15 minutes.
        date = h.get("date") or ""
        try:
            at = email.utils.parsedate_to_datetime(date)
        except (TypeError, ValueError):
            at = None
        if at is None or at.tzinfo is None:
            raise _Reject(400, "InvalidParam", "The Param Date is invalid.")
        self._check_time(at, 400, "RequestTimeTooSkewed")
        # 3. Body hash (upper-case hex).
        content_sha256 = h.get("content-sha256") or ""
        if content_sha256 != hashlib.sha256(body).hexdigest().upper():
            raise _Reject(401, "SignatureNotMatch", "The content-sha256 does not match the body.")

    def _verify_instance_signature(self, handler: _Handler) -> None:
        h = handler.headers
        key_id = h.get("x-kms-acccesskeyid") or ""
        content_sha256 = h.get("content-sha256") or ""
        date = h.get("date") or ""
        # 4. The client key must be known.
        with self._lock:
            public_key = self._client_keys.get(key_id)
        if public_key is None:
            raise _Reject(401, "Unauthorized", "The client key is not authorized.")
        # 5. RSA PKCS#1 v1.5 SHA-256 over the string to sign.
        authorization = h.get("authorization") or ""
        if not authorization.startswith("Bearer "):
            raise _Reject(401, "SignatureNotMatch", "The Authorization header is malformed.")
        kms_headers = "".join(
            f"{name}:{h.get(name, '').strip()}\n"
            for name in sorted({n.lower() for n in h if n.lower().startswith("x-kms-")})
        )
        string_to_sign = (
            f"POST\n{content_sha256}\n{h.get('content-type', '')}\n{date}\n{kms_headers}/"
        )
        try:
            signature = base64.b64decode(authorization.removeprefix("Bearer "), validate=True)
            public_key.verify(
                signature, string_to_sign.encode(), padding.PKCS1v15(), hashes.SHA256()
            )
        except (InvalidSignature, ValueError):
            raise _Reject(401, "SignatureNotMatch", "The signature does not match.") from None

    def _instance_get(self, body: bytes) -> bytes:
        try:
            fields = pb.decode(body)
            name = pb.get_str(fields, 1)
            stage = pb.get_str(fields, 2) or "ACSCurrent"
            version_id = pb.get_str(fields, 3)
        except pb.ProtobufError:
            raise _Reject(
                400, "InvalidParameter", "The request body is not a GetSecretValueRequest."
            ) from None
        if not name:
            raise _Reject(400, "InvalidParameter", "SecretName is required.")
        with self._lock:
            document = self._op_get(
                {
                    "SecretName": name,
                    "VersionStage": stage,
                    **({"VersionId": version_id} if version_id else {}),
                }
            )
        return pb.encode(
            [
                (1, document["SecretName"]),
                (2, document["SecretType"]),
                (3, document["SecretData"]),
                (4, document["SecretDataType"]),
                *((5, stage_name) for stage_name in document["VersionStages"]["VersionStage"]),
                (6, document["VersionId"]),
                (7, document["CreateTime"]),
            ]
        )
