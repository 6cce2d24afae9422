# SPDX-License-Identifier: Apache-2.0
"""KBS configuration entries that point an Aliyun KMS backend at :mod:`support.kms_emulator`.

The instance gateway is always reached over TLS with the test CA (``cert_pem``); the
shared gateway too (``shared_ca_path``), so no insecure switch is needed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from support.kms_emulator import KmsEmulator
from support.kms_fixtures import (
    ACCESS_KEY_ID,
    ACCESS_KEY_SECRET,
    ClientKeyMaterial,
    TlsPki,
)

#: Timeouts and backoff short enough for tests.
FAST: dict[str, Any] = {
    "connect_timeout": 2.0,
    "read_timeout": 2.0,
    "backoff_initial": 0.01,
    "backoff_max": 0.02,
    "retry_deadline": 2.0,
}

#: Environment variables that would change what a KMS backend does.
_HERMETIC_PREFIXES = ("ALIBABA_CLOUD_", "ALICLOUD_", "ALIYUN_", "KBS_RESOURCE_STORAGE_ALIYUN_")
_HERMETIC_NAMES = {
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "DEBUG",
    "REQUESTS_CA_BUNDLE",
}


def kms_environment_names() -> Iterator[str]:
    """Names of set environment variables a hermetic KMS test must remove."""
    for name in list(os.environ):
        upper = name.upper()
        if upper.startswith(_HERMETIC_PREFIXES) or upper in _HERMETIC_NAMES:
            yield name


def trustee_keys(
    emulator: KmsEmulator, pki: TlsPki, client_key: ClientKeyMaterial
) -> dict[str, Any]:
    """Trustee's four Aliyun keys (contents), plus the fork's ``endpoint`` -> the emulator.

    The password keeps the trailing newline a ``--set-file`` of the console's password
    file leaves in it.
    """
    return {
        "client_key": client_key.client_key_json,
        "kms_instance_id": pki.kms_instance_id,
        "password": client_key.password + "\n",
        "cert_pem": pki.ca_pem,
        "endpoint": emulator.endpoint,
    }


def shared_keys(emulator: KmsEmulator, pki: TlsPki) -> dict[str, Any]:
    """AccessKey credentials for the emulator's shared gateway (over TLS, test CA)."""
    return {
        "credential_type": "access_key",
        "access_key_id": ACCESS_KEY_ID,
        "access_key_secret": ACCESS_KEY_SECRET,
        "region_id": "cn-hangzhou",
        "shared_endpoint": emulator.endpoint,
        "shared_ca_path": str(pki.ca_path),
    }


def kms_entry(
    emulator: KmsEmulator,
    pki: TlsPki,
    client_key: ClientKeyMaterial,
    *,
    shared: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """The keys of one Aliyun backend: instance gateway, optionally the shared one too."""
    entry: dict[str, Any] = {
        "storage_backend_type": "Aliyun",
        **trustee_keys(emulator, pki, client_key),
        **FAST,
    }
    if shared:
        entry.update(shared_keys(emulator, pki))
        # The fork's single `endpoint` names the instance gateway once a client key is
        # set; the shared gateway gets its own key.
    entry.update(overrides)
    return entry


def kms_mount(
    emulator: KmsEmulator,
    pki: TlsPki,
    client_key: ClientKeyMaterial,
    *,
    path: str = "default/aliyun",
    **overrides: Any,
) -> dict[str, Any]:
    """A ``[[plugins.mounts]]`` entry for the emulator."""
    return {"path": path, **kms_entry(emulator, pki, client_key, **overrides)}
