# SPDX-License-Identifier: Apache-2.0
"""A small client of the dedicated KMS instance gateway (``dkms-gcs-0.2``).

The official ``alibabacloud-dkms-gcs`` SDK pins ``protobuf<4``, ``pyOpenSSL<23.3`` and
``cryptography<42`` and ignores the instance CA on its async path (research notes 1.3,
1.4), so this module speaks the protocol itself on ``httpx`` and ``cryptography``:

* ``POST /`` with a protobuf body (:mod:`._protobuf`);
* headers ``x-kms-apiversion``, ``x-kms-apiname``, ``x-kms-signaturemethod``,
  ``x-kms-acccesskeyid`` (sic, three c's, as the service spells it), ``content-sha256``
  (upper-case hex SHA-256 of the body), ``Date`` (RFC 1123, GMT);
* ``Authorization: Bearer <base64 RSA PKCS#1 v1.5 SHA-256 signature>`` over
  :func:`string_to_sign` with the AAP client key's private key;
* TLS verified against the instance's private CA (``PrivateKmsCA_<kst>.pem``), not the
  system trust store.

Which operations the gateway offers: the instance API (every ``dkms-gcs`` SDK, API version
``dkms-gcs-0.2``) has ``Encrypt``, ``Decrypt``, ``Sign``, ``Verify``, ``GenerateRandom``,
``GenerateDataKey(Pair)``, ``GetPublicKey``, the ``Advance*`` variants and, for secrets,
**only** ``GetSecretValue``. Creating, versioning, deleting and listing secrets is done
through the shared gateway (:mod:`.shared`), which also manages secrets stored in a KMS
instance. This client therefore implements :class:`~.api.SecretReader` only.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import email.utils
import hashlib
import json
import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

import httpx
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from storage_backends.aliyun_kms import _protobuf as pb
from storage_backends.aliyun_kms.api import (
    ErrorKind,
    KmsObserver,
    KmsRequestError,
    NoKmsObserver,
    SecretValue,
    classify_response_error,
    observe_kms_call,
)
from storage_backends.aliyun_kms.settings import AliyunKmsConfigError

_logger = logging.getLogger(__name__)

__all__ = [
    "API_VERSION",
    "SIGNATURE_METHOD",
    "ClientKey",
    "InstanceGatewayClient",
    "default_instance_endpoint",
    "string_to_sign",
]

API_VERSION: Final = "dkms-gcs-0.2"
SIGNATURE_METHOD: Final = "RSA_PKCS1_SHA_256"
CONTENT_TYPE: Final = "application/x-protobuf"
#: The header name as the service spells it (three c's).
ACCESS_KEY_ID_HEADER: Final = "x-kms-acccesskeyid"
#: The canonical resource; the SDKs always sign ``/``.
CANONICAL_RESOURCE: Final = "/"
#: Cap on a response body we read (a secret value is at most 30,720 bytes).
MAX_RESPONSE_BYTES: Final = 256 * 1024
#: Cap on the client key JSON document.
MAX_CLIENT_KEY_BYTES: Final = 64 * 1024
_HTTP_OK: Final = 200
_GATEWAY: Final = "instance"


def default_instance_endpoint(kms_instance_id: str) -> str:
    """Return the instance gateway host of ``kms_instance_id`` (``kst-...``)."""
    return f"{kms_instance_id}.cryptoservice.kms.aliyuncs.com"


def string_to_sign(
    *,
    method: str,
    content_sha256: str,
    content_type: str,
    date: str,
    kms_headers: Mapping[str, str],
    resource: str = CANONICAL_RESOURCE,
) -> str:
    r"""Build the instance API string to sign (research notes 2.4).

    ``METHOD\\nCONTENT-SHA256\\nCONTENT-TYPE\\nDATE\\n``, then every ``x-kms-*`` header sorted
    by lower-cased name as ``name:trimmed value\\n``, then the canonical resource.
    """
    canonical_headers = "".join(
        f"{name}:{value.strip()}\n"
        for name, value in sorted((k.lower(), v) for k, v in kms_headers.items())
        if name.startswith("x-kms-")
    )
    return f"{method}\n{content_sha256}\n{content_type}\n{date}\n{canonical_headers}{resource}"


def _clean_password(password: str) -> str:
    """Strip what a downloaded password file adds: a trailing newline (or JSON wrapping).

    The console's ``clientKey_<KeyId>_Password.txt`` is the bare password, often saved with
    a trailing newline; guest-components' in-guest layout wraps it as
    ``{"ClientKeyPassword": "..."}``. Trailing whitespace is removed as the reference does
    (``trim_end``).
    """
    text = password.strip()
    if text.startswith("{"):
        try:
            document = json.loads(text)
        except ValueError:
            document = None
        if isinstance(document, dict) and isinstance(document.get("ClientKeyPassword"), str):
            return str(document["ClientKeyPassword"]).rstrip()
    return password.rstrip()


@dataclass(frozen=True, slots=True)
class ClientKey:
    """An AAP client key: the key id (``KAAP.…``) and its RSA private key."""

    key_id: str
    private_key: rsa.RSAPrivateKey = field(repr=False)

    @classmethod
    def from_json(cls, client_key_json: str, password: str) -> ClientKey:
        """Open a ``clientKey_<KeyId>.json`` document with its password.

        The document is ``{"KeyId": "KAAP.…", "PrivateKeyData": "<base64 PKCS#12>"}``; real
        client keys use legacy PKCS#12 algorithms (SHA1/3DES, SHA1/RC2-40), which
        ``cryptography`` opens. A trailing newline of the password is ignored.

        Raises:
            AliyunKmsConfigError: the document is malformed, the password is wrong, or the
                PKCS#12 holds no RSA key. The message never contains the password.
        """
        # 1. Parse the JSON document.
        if len(client_key_json) > MAX_CLIENT_KEY_BYTES:
            raise AliyunKmsConfigError("aliyun kms client key document is too large")
        try:
            document = json.loads(client_key_json)
        except ValueError:
            raise AliyunKmsConfigError("aliyun kms client key is not valid JSON") from None
        if not isinstance(document, dict):
            raise AliyunKmsConfigError("aliyun kms client key is not a JSON object")
        key_id = document.get("KeyId")
        key_data = document.get("PrivateKeyData")
        if not isinstance(key_id, str) or not key_id.strip():
            raise AliyunKmsConfigError("aliyun kms client key has no KeyId")
        if not isinstance(key_data, str) or not key_data.strip():
            raise AliyunKmsConfigError(f"aliyun kms client key {key_id} has no PrivateKeyData")
        key_id = key_id.strip()
        # 2. Base64-decode the PKCS#12 blob.
        try:
            p12 = base64.b64decode(key_data, validate=True)
        except (binascii.Error, ValueError):
            raise AliyunKmsConfigError(
                f"aliyun kms client key {key_id}: PrivateKeyData is not base64"
            ) from None
        # 3. Decrypt it with the password. The cryptography error says nothing useful and
        #    nothing secret either, but it is dropped (from None) to keep the rule simple.
        try:
            private_key, _cert, _extra = pkcs12.load_key_and_certificates(
                p12, _clean_password(password).encode("utf-8")
            )
        except ValueError:
            raise AliyunKmsConfigError(
                f"aliyun kms client key {key_id} could not be decrypted: "
                "wrong client key password or corrupt PKCS#12"
            ) from None
        # 4. It must be an RSA key (the only signature method is RSA_PKCS1_SHA_256).
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise AliyunKmsConfigError(f"aliyun kms client key {key_id} holds no RSA private key")
        return cls(key_id=key_id, private_key=private_key)

    def sign(self, message: bytes) -> bytes:
        """Sign ``message`` with RSA PKCS#1 v1.5 and SHA-256."""
        return self.private_key.sign(message, padding.PKCS1v15(), hashes.SHA256())


def _tls_context(ca_pem: str | None, *, insecure_skip_tls_verify: bool) -> ssl.SSLContext:
    """Trust only the instance CA; check the host name; TLS 1.2 or newer."""
    if insecure_skip_tls_verify:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if not ca_pem:
        raise AliyunKmsConfigError("aliyun kms instance gateway needs the instance CA (cert_pem)")
    try:
        # cadata given: the system trust store is NOT loaded, only the instance CA.
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_pem)
    except (ssl.SSLError, ValueError):
        raise AliyunKmsConfigError(
            "aliyun kms instance CA (cert_pem) is not a PEM certificate"
        ) from None
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class InstanceGatewayClient:
    """Reads secrets through a dedicated KMS instance gateway (``GetSecretValue`` only)."""

    gateway = _GATEWAY

    def __init__(
        self,
        *,
        endpoint: str,
        client_key: ClientKey,
        ca_pem: str | None,
        now: Callable[[], dt.datetime],
        connect_timeout: float,
        read_timeout: float,
        insecure_skip_tls_verify: bool = False,
        user_agent: str = "confidential-kbs aliyun-kms-instance",
        observer: KmsObserver | None = None,
    ) -> None:
        """Prepare the HTTPS client; no request is sent yet.

        Args:
            endpoint: ``host[:port]`` of the gateway (``<kst>.cryptoservice.kms.aliyuncs.com``).
            client_key: the AAP client key that signs requests.
            ca_pem: the instance CA certificate(s), PEM text.
            now: wall clock for the ``Date`` header (aware datetimes); the service rejects
                more than 15 minutes of skew.
            connect_timeout: seconds to connect (TCP + TLS).
            read_timeout: seconds to wait for response bytes.
            insecure_skip_tls_verify: do not verify the server certificate (testing only).
            user_agent: the ``User-Agent`` header.
            observer: told about every call (for metrics).

        Raises:
            AliyunKmsConfigError: the CA is missing or not PEM.
        """
        if "/" in endpoint or not endpoint:
            raise AliyunKmsConfigError("aliyun kms instance endpoint must be host[:port]")
        self._client_key = client_key
        self._observer: KmsObserver = observer or NoKmsObserver()
        self._now = now
        self._user_agent = user_agent
        self._http = httpx.AsyncClient(
            base_url=f"https://{endpoint}",
            verify=_tls_context(ca_pem, insecure_skip_tls_verify=insecure_skip_tls_verify),
            timeout=httpx.Timeout(
                connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout
            ),
            # No proxies, no SSL_CERT_FILE from the environment: the gateway is VPC-private
            # and must be verified against its own CA only.
            trust_env=False,
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        """Name the gateway and key id only."""
        key_id = self._client_key.key_id
        return f"InstanceGatewayClient(base_url={self._http.base_url!s}, key_id={key_id})"

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    def signed_headers(self, api_name: str, body: bytes) -> dict[str, str]:
        """Return the request headers for ``api_name`` with ``body``, signed."""
        content_sha256 = hashlib.sha256(body).hexdigest().upper()
        date = email.utils.format_datetime(self._now().astimezone(dt.UTC), usegmt=True)
        kms_headers = {
            "x-kms-apiversion": API_VERSION,
            "x-kms-apiname": api_name,
            "x-kms-signaturemethod": SIGNATURE_METHOD,
            ACCESS_KEY_ID_HEADER: self._client_key.key_id,
        }
        to_sign = string_to_sign(
            method="POST",
            content_sha256=content_sha256,
            content_type=CONTENT_TYPE,
            date=date,
            kms_headers=kms_headers,
        )
        signature = base64.b64encode(self._client_key.sign(to_sign.encode("utf-8"))).decode()
        return {
            "accept": CONTENT_TYPE,
            "content-type": CONTENT_TYPE,
            "content-sha256": content_sha256,
            "date": date,
            "user-agent": self._user_agent,
            **kms_headers,
            "authorization": f"Bearer {signature}",
        }

    async def _call(self, api_name: str, body: bytes) -> pb.Fields:
        try:
            fields = await self._call_once(api_name, body)
        except KmsRequestError as err:
            observe_kms_call(self._observer, api_name, err)
            raise
        observe_kms_call(self._observer, api_name, None)
        return fields

    async def _call_once(self, api_name: str, body: bytes) -> pb.Fields:
        headers = self.signed_headers(api_name, body)
        try:
            async with self._http.stream("POST", "/", content=body, headers=headers) as response:
                payload = bytearray()
                async for chunk in response.aiter_bytes():
                    payload += chunk
                    if len(payload) > MAX_RESPONSE_BYTES:
                        raise KmsRequestError(
                            gateway=_GATEWAY,
                            operation=api_name,
                            kind=ErrorKind.UNAVAILABLE,
                            http_status=response.status_code,
                            detail="response too large",
                        )
                status = response.status_code
        except httpx.TimeoutException:
            raise KmsRequestError(
                gateway=_GATEWAY, operation=api_name, kind=ErrorKind.UNAVAILABLE, detail="timed out"
            ) from None
        except httpx.TransportError as exc:
            # TLS verification failures land here too (ssl.SSLCertVerificationError inside).
            detail = "tls verification failed" if _is_tls_failure(exc) else "network error"
            raise KmsRequestError(
                gateway=_GATEWAY, operation=api_name, kind=ErrorKind.UNAVAILABLE, detail=detail
            ) from None
        if status == _HTTP_OK:
            try:
                return pb.decode(bytes(payload))
            except pb.ProtobufError:
                raise KmsRequestError(
                    gateway=_GATEWAY,
                    operation=api_name,
                    kind=ErrorKind.UNAVAILABLE,
                    http_status=status,
                    detail="malformed response",
                ) from None
        raise _error_from_response(api_name, status, bytes(payload))

    async def get_secret_value(self, name: str) -> SecretValue:
        """Return the ``ACSCurrent`` version of secret ``name``.

        Raises:
            KmsRequestError: the call failed (``NOT_FOUND`` for a missing secret).
        """
        body = pb.encode([(1, name), (2, "ACSCurrent")])
        fields = await self._call("GetSecretValue", body)
        try:
            return SecretValue(
                name=pb.get_str(fields, 1) or name,
                data=pb.get_str(fields, 3),
                data_type=pb.get_str(fields, 4) or "text",
                version_id=pb.get_str(fields, 6) or None,
            )
        except pb.ProtobufError:
            raise KmsRequestError(
                gateway=_GATEWAY,
                operation="GetSecretValue",
                kind=ErrorKind.UNAVAILABLE,
                http_status=_HTTP_OK,
                detail="malformed response",
            ) from None


def _is_tls_failure(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _error_from_response(api_name: str, status: int, payload: bytes) -> KmsRequestError:
    """Decode the protobuf ``Error`` of a non-200 answer (best effort)."""
    code: str | None = None
    request_id: str | None = None
    try:
        fields = pb.decode(payload)
        code = pb.get_str(fields, 2) or None
        request_id = pb.get_str(fields, 4) or None
    except pb.ProtobufError:
        _logger.debug("instance gateway %s: undecodable error body (http %d)", api_name, status)
    return KmsRequestError(
        gateway=_GATEWAY,
        operation=api_name,
        kind=classify_response_error(code, status),
        code=code,
        http_status=status,
        request_id=request_id,
    )
