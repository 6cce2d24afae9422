# SPDX-License-Identifier: Apache-2.0
"""Fixtures for the Aliyun KMS backend tests: test PKI, client key, emulator, backend factory.

Everything runs against :mod:`support.kms_emulator` on 127.0.0.1; the environment is
scrubbed of ``ALIBABA_CLOUD_*`` / proxy variables so no credential chain or proxy applies.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kbs.clock import SystemClock
from storage_backends.aliyun_kms import AliyunKmsBackend, AliyunKmsSettings
from support.kms_emulator import KmsEmulator
from support.kms_fixtures import (
    ACCESS_KEY_ID,
    ACCESS_KEY_SECRET,
    CLIENT_KEY_PASSWORD,
    STS_ACCESS_KEY_ID,
    STS_ACCESS_KEY_SECRET,
    STS_TOKEN,
    ClientKeyMaterial,
    TlsPki,
    make_client_key,
    make_tls_pki,
)


@pytest.fixture(autouse=True)
def _hermetic_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        upper = name.upper()
        if upper.startswith(("ALIBABA_CLOUD_", "ALICLOUD_", "ALIYUN_")) or upper in {
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "NO_PROXY",
            "DEBUG",
        }:
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def kms_pki(tmp_path_factory: pytest.TempPathFactory) -> TlsPki:
    return make_tls_pki(tmp_path_factory.mktemp("kms-pki"))


@pytest.fixture(scope="session")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> TlsPki:
    return make_tls_pki(tmp_path_factory.mktemp("other-pki"))


@pytest.fixture(scope="session")
def client_key() -> ClientKeyMaterial:
    return make_client_key(CLIENT_KEY_PASSWORD)


def _configure(emulator: KmsEmulator, client_key: ClientKeyMaterial) -> KmsEmulator:
    emulator.add_client_key(client_key.key_id, client_key.public_key)
    emulator.add_access_key(ACCESS_KEY_ID, ACCESS_KEY_SECRET)
    emulator.add_access_key(STS_ACCESS_KEY_ID, STS_ACCESS_KEY_SECRET, STS_TOKEN)
    return emulator


@pytest.fixture
def emulator(kms_pki: TlsPki, client_key: ClientKeyMaterial) -> Iterator[KmsEmulator]:
    """Both gateways over TLS (server certificate from ``kms_pki``)."""
    with _configure(KmsEmulator(tls=kms_pki.server_context()), client_key) as emu:
        yield emu


@pytest.fixture
def plain_emulator(client_key: ClientKeyMaterial) -> Iterator[KmsEmulator]:
    """Both gateways over plain HTTP (for ``insecure_shared_gateway_http``)."""
    with _configure(KmsEmulator(), client_key) as emu:
        yield emu


class FakeMonotonic:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeSleep:
    """Records requested delays and advances the fake clock instead of sleeping."""

    clock: FakeMonotonic
    delays: list[float] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.clock.advance(seconds)


@pytest.fixture
def monotonic() -> FakeMonotonic:
    return FakeMonotonic()


@pytest.fixture
def fake_sleep(monotonic: FakeMonotonic) -> FakeSleep:
    return FakeSleep(monotonic)


def seeded_entropy(seed: int = 7) -> Callable[[int], bytes]:
    rng = random.Random(seed)
    return rng.randbytes


@dataclass
class Settings:
    """Builds settings pointing at the emulator."""

    emulator: KmsEmulator
    pki: TlsPki
    client_key: ClientKeyMaterial

    def instance(self, **overrides: Any) -> AliyunKmsSettings:
        values: dict[str, Any] = {
            "kms_instance_id": self.pki.kms_instance_id,
            "client_key": self.client_key.client_key_json,
            "password": self.client_key.password,
            "cert_pem": self.pki.ca_pem,
            "instance_endpoint": self.emulator.endpoint,
            "connect_timeout": 2.0,
            "read_timeout": 2.0,
        }
        values.update(overrides)
        return AliyunKmsSettings(**values)

    def shared(self, **overrides: Any) -> AliyunKmsSettings:
        values: dict[str, Any] = {
            "credential_type": "access_key",
            "access_key_id": ACCESS_KEY_ID,
            "access_key_secret": ACCESS_KEY_SECRET,
            "shared_endpoint": self.emulator.endpoint,
            "shared_ca_path": self.pki.ca_path,
            "region_id": "cn-hangzhou",
            "connect_timeout": 2.0,
            "read_timeout": 2.0,
        }
        values.update(overrides)
        return AliyunKmsSettings(**values)

    def both(self, **overrides: Any) -> AliyunKmsSettings:
        instance = {
            "kms_instance_id": self.pki.kms_instance_id,
            "client_key": self.client_key.client_key_json,
            "password": self.client_key.password,
            "cert_pem": self.pki.ca_pem,
            "instance_endpoint": self.emulator.endpoint,
        }
        return self.shared(**{**instance, **overrides})


@pytest.fixture
def settings(emulator: KmsEmulator, kms_pki: TlsPki, client_key: ClientKeyMaterial) -> Settings:
    return Settings(emulator, kms_pki, client_key)


@pytest.fixture
def plain_settings(
    plain_emulator: KmsEmulator, kms_pki: TlsPki, client_key: ClientKeyMaterial
) -> Settings:
    return Settings(plain_emulator, kms_pki, client_key)


@pytest.fixture
async def make_backend(monotonic: FakeMonotonic, fake_sleep: FakeSleep) -> Any:
    """``make_backend(settings)`` -> backend with fake clock and sleep; closed at teardown."""
    made: list[AliyunKmsBackend] = []

    def factory(backend_settings: AliyunKmsSettings, **kwargs: Any) -> AliyunKmsBackend:
        options: dict[str, Any] = {
            "now": SystemClock().now,
            "entropy": seeded_entropy(),
            "monotonic": monotonic,
            "sleep": fake_sleep,
        }
        options.update(kwargs)
        backend = AliyunKmsBackend(backend_settings, **options)
        made.append(backend)
        return backend

    yield factory
    for backend in made:
        await backend.aclose()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
