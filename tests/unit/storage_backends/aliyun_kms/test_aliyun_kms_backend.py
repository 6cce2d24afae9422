# SPDX-License-Identifier: Apache-2.0
"""AliyunKmsBackend behaviour: caching, retries, throttling, outages, secrecy, conformance."""

from __future__ import annotations

import asyncio
import logging

import pytest

from storage_backends.aliyun_kms import (
    READINESS_PROBE_SECRET,
    AliyunKmsBackend,
    AliyunKmsSettings,
    ClientKey,
    ErrorKind,
    KmsRequestError,
    SecretValue,
)
from storage_backends.base import ResourceDesc, StorageBackend
from storage_backends.errors import (
    ResourceNotFoundError,
    ResourceTooLargeError,
    StorageUnavailableError,
)
from support.kms_fixtures import ACCESS_KEY_SECRET, CLIENT_KEY_PASSWORD, STS_TOKEN

MODEL_KEY = ResourceDesc("default", "aliyun", "model-decryption-key")
VALUE = "model-key-9c1e77f0a2"


def desc(tag: str) -> ResourceDesc:
    return ResourceDesc("default", "aliyun", tag)


@pytest.fixture
def both(emulator, settings, kms_pki):
    """Settings with both gateways (reads: instance, writes: shared)."""
    emulator.create_secret("model-decryption-key", VALUE, instance_id=kms_pki.kms_instance_id)
    return settings.both


# ---------------------------------------------------------------- cache


async def test_within_ttl_no_kms_call(emulator, both, make_backend, monotonic):
    backend = make_backend(both(cache_ttl=60))
    assert await backend.get(MODEL_KEY) == VALUE.encode()
    monotonic.advance(59)
    assert await backend.get(MODEL_KEY) == VALUE.encode()
    assert emulator.count() == 1
    monotonic.advance(2)
    emulator.put_value("model-decryption-key", "rotated", version_id="v2")
    assert await backend.get(MODEL_KEY) == b"rotated"
    assert emulator.count() == 2


async def test_reads_use_the_instance_gateway_and_writes_the_shared_one(
    emulator, both, make_backend
):
    backend = make_backend(both())
    await backend.get(MODEL_KEY)
    await backend.put(MODEL_KEY, b"new")
    assert emulator.count(gateway="instance") == 1
    assert emulator.count(gateway="shared", action="PutSecretValue") == 1
    shared_reads = make_backend(both(read_gateway="shared"))
    await shared_reads.get(MODEL_KEY)
    assert emulator.count(gateway="shared", action="GetSecretValue") == 1


async def test_throttling_is_retried_with_backoff(emulator, both, make_backend, fake_sleep):
    emulator.throttle(times=2)
    backend = make_backend(both(backoff_initial=0.2, backoff_max=5.0))
    assert await backend.get(MODEL_KEY) == VALUE.encode()
    assert emulator.count(status=429) == 2
    assert emulator.count(status=200) == 1
    first, second = fake_sleep.delays
    assert 0.1 <= first <= 0.2  # equal jitter around 0.2
    assert 0.2 <= second <= 0.4  # doubled
    assert second >= first


@pytest.mark.parametrize("gateway", ["instance", "shared"])
async def test_throttling_after_ttl_serves_the_cached_value(
    emulator, both, make_backend, monotonic, *, fake_sleep, gateway
):
    backend = make_backend(
        both(read_gateway=gateway, cache_ttl=60, cache_max_stale=600, stale_refresh_interval=30)
    )
    assert await backend.get(MODEL_KEY) == VALUE.encode()
    monotonic.advance(61)
    emulator.throttle(times=None)  # QPS quota exhausted until further notice
    assert await backend.get(MODEL_KEY) == VALUE.encode()
    # Retried max_attempts (4) times with growing delays, then fell back to the cache.
    assert emulator.count(status=429) == 4
    assert len(fake_sleep.delays) == 3
    assert fake_sleep.delays == sorted(fake_sleep.delays)
    # Within stale_refresh_interval: served from memory, KMS is left alone.
    monotonic.advance(10)
    assert await backend.get(MODEL_KEY) == VALUE.encode()
    assert emulator.count(status=429) == 4
    # After it: one more refresh attempt (again throttled), still served.
    monotonic.advance(30)
    assert await backend.get(MODEL_KEY) == VALUE.encode()
    assert emulator.count(status=429) == 8
    # Throttling ends: the next refresh succeeds.
    emulator.clear_faults()
    monotonic.advance(31)
    emulator.put_value("model-decryption-key", "rotated", version_id="v2")
    assert await backend.get(MODEL_KEY) == b"rotated"


async def test_outage_within_max_stale_serves_the_cached_value(
    emulator, both, make_backend, monotonic
):
    backend = make_backend(both(cache_ttl=60, cache_max_stale=600))
    await backend.get(MODEL_KEY)
    emulator.go_down("refused")
    monotonic.advance(300)
    assert await backend.get(MODEL_KEY) == VALUE.encode()


@pytest.mark.parametrize("mode", ["refused", "reset"])
async def test_outage_past_max_stale_is_unavailable(emulator, both, make_backend, monotonic, mode):
    backend = make_backend(both(cache_ttl=60, cache_max_stale=600))
    await backend.get(MODEL_KEY)
    emulator.go_down(mode)
    monotonic.advance(60 + 601)
    with pytest.raises(StorageUnavailableError, match=r"^aliyun kms unavailable") as info:
        await backend.get(MODEL_KEY)
    assert "network error" in str(info.value)


async def test_outage_without_cache_is_unavailable(emulator, both, make_backend, fake_sleep):
    emulator.inject_error(503, "ServiceUnavailableTemporary", times=None)
    backend = make_backend(both(max_attempts=3))
    with pytest.raises(StorageUnavailableError, match="aliyun kms unavailable: server error"):
        await backend.get(MODEL_KEY)
    assert emulator.count(status=503) == 3
    assert len(fake_sleep.delays) == 2


async def test_internal_failure_is_retried(emulator, both, make_backend):
    emulator.inject_error(500, "InternalFailure", times=1)
    backend = make_backend(both())
    assert await backend.get(MODEL_KEY) == VALUE.encode()
    assert emulator.count() == 2


async def test_retry_deadline_bounds_the_attempts(emulator, both, make_backend, fake_sleep):
    emulator.throttle(times=None)
    backend = make_backend(
        both(max_attempts=50, backoff_initial=1.0, backoff_max=8.0, retry_deadline=10.0)
    )
    with pytest.raises(StorageUnavailableError, match="aliyun kms unavailable: throttled"):
        await backend.get(MODEL_KEY)
    assert sum(fake_sleep.delays) <= 10.0
    assert emulator.count() < 50
    assert emulator.count() == len(fake_sleep.delays) + 1


async def test_retry_after_hint_is_honoured(emulator, both, make_backend, fake_sleep):
    emulator.inject_error(429, "Rejected.Throttling", times=1, retry_after_ms=3000)
    backend = make_backend(both(read_gateway="shared"))
    assert await backend.get(MODEL_KEY) == VALUE.encode()
    assert fake_sleep.delays == [3.0]


async def test_permission_errors_are_not_served_stale(emulator, both, make_backend, monotonic):
    backend = make_backend(both(cache_ttl=60))
    await backend.get(MODEL_KEY)
    monotonic.advance(61)
    emulator.inject_error(403, "Forbidden.NoPermission", times=None)
    with pytest.raises(
        StorageUnavailableError,
        match=r"aliyun kms unavailable: request rejected \(Forbidden\.NoPermission\)",
    ):
        await backend.get(MODEL_KEY)
    assert emulator.count(status=403) == 1  # not retried


async def test_not_found_is_negatively_cached_briefly(emulator, both, make_backend, monotonic):
    backend = make_backend(both(negative_cache_ttl=5))
    for _ in range(3):
        with pytest.raises(ResourceNotFoundError):
            await backend.get(desc("absent"))
    assert emulator.count() == 1
    monotonic.advance(5)
    with pytest.raises(ResourceNotFoundError):
        await backend.get(desc("absent"))
    assert emulator.count() == 2
    await backend.put(desc("absent"), b"now here")  # writes invalidate the negative entry
    assert await backend.get(desc("absent")) == b"now here"


async def test_negative_cache_can_be_disabled(emulator, both, make_backend):
    backend = make_backend(both(negative_cache_ttl=0))
    for _ in range(2):
        with pytest.raises(ResourceNotFoundError):
            await backend.get(desc("absent"))
    assert emulator.count() == 2


async def test_writes_and_deletes_invalidate_the_cache(emulator, both, make_backend):
    backend = make_backend(both(cache_ttl=3600))
    assert await backend.get(MODEL_KEY) == VALUE.encode()
    await backend.put(MODEL_KEY, b"second")
    assert await backend.get(MODEL_KEY) == b"second"
    await backend.delete(MODEL_KEY, force=True)
    with pytest.raises(ResourceNotFoundError):
        await backend.get(MODEL_KEY)


async def test_a_failed_write_still_invalidates(emulator, both, make_backend):
    backend = make_backend(both(cache_ttl=3600, max_attempts=1))
    await backend.get(MODEL_KEY)
    emulator.inject_error(500, "InternalFailure", action="PutSecretValue")
    with pytest.raises(StorageUnavailableError):
        await backend.put(MODEL_KEY, b"maybe")
    await backend.get(MODEL_KEY)
    assert emulator.count(action="GetSecretValue") == 2


async def test_concurrent_reads_share_one_kms_call(emulator, both, make_backend):
    emulator.set_latency(0.2)
    backend = make_backend(both())
    results = await asyncio.gather(*(backend.get(MODEL_KEY) for _ in range(8)))
    assert results == [VALUE.encode()] * 8
    assert emulator.count() == 1


async def test_cache_is_bounded(emulator, both, make_backend):
    for tag in ("a", "b", "c"):
        emulator.create_secret(tag, tag)
    backend = make_backend(both(cache_max_entries=2))
    for tag in ("a", "b", "c", "a"):
        await backend.get(desc(tag))
    assert emulator.count() == 4  # "a" was evicted by "c"


# ---------------------------------------------------------------- values


async def test_binary_secrets_are_decoded(emulator, both, make_backend):
    emulator.create_secret("blob", "AAEC/w==", data_type="binary")
    assert await make_backend(both()).get(desc("blob")) == b"\x00\x01\x02\xff"
    # The reference behaviour (SecretData text as-is) is one switch away.
    raw = make_backend(both(decode_binary_secrets=False))
    assert await raw.get(desc("blob")) == b"AAEC/w=="


async def test_invalid_base64_binary_secret(emulator, both, make_backend):
    emulator.create_secret("blob", "not base64!", data_type="binary")
    with pytest.raises(StorageUnavailableError, match="not valid base64"):
        await make_backend(both()).get(desc("blob"))


async def test_text_secrets_are_utf8_bytes_like_the_reference(emulator, both, make_backend):
    emulator.create_secret("utf8", "clé-🔑")
    assert await make_backend(both()).get(desc("utf8")) == "clé-🔑".encode()


# ---------------------------------------------------------------- readiness


async def test_check_probes_once_per_ttl(emulator, both, make_backend, monotonic):
    backend = make_backend(both(cache_ttl=60))
    await backend.check()
    await backend.check()
    assert [r.code for r in emulator.requests] == ["Forbidden.ResourceNotFound"]
    monotonic.advance(61)
    await backend.check()
    assert emulator.count() == 2


async def test_check_accepts_no_permission_for_the_probe(emulator, both, make_backend):
    # A least-privilege AAP policy may not cover the probe name: reaching KMS and passing
    # authentication is what readiness needs.
    emulator.inject_error(403, "Forbidden.NoPermission")
    await make_backend(both()).check()


async def test_check_fails_on_outage_and_bad_signatures(emulator, both, make_backend, monkeypatch):
    backend = make_backend(both(max_attempts=1))
    emulator.go_down("reset")
    with pytest.raises(StorageUnavailableError, match="aliyun kms unavailable"):
        await backend.check()
    emulator.come_back()
    monkeypatch.setattr(ClientKey, "sign", lambda _self, _message: b"\x01" * 256)
    with pytest.raises(StorageUnavailableError, match="SignatureNotMatch"):
        await backend.check()
    assert READINESS_PROBE_SECRET == "kbs-readiness-probe"


# ---------------------------------------------------------------- secrecy


def _chain(exc: BaseException | None) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


async def test_credentials_and_values_never_in_logs_errors_or_reprs(
    emulator, settings, client_key, make_backend, *, monotonic, caplog
):
    secrets = [
        VALUE,
        "written-value-51c0",
        CLIENT_KEY_PASSWORD,
        ACCESS_KEY_SECRET,
        STS_TOKEN,
        client_key.client_key_json.split('"PrivateKeyData": "')[1][:40],
    ]
    emulator.create_secret("model-decryption-key", VALUE)
    errors: list[BaseException] = []
    with caplog.at_level(logging.DEBUG):
        backend = make_backend(settings.both(cache_ttl=1, cache_max_stale=1, max_attempts=2))
        await backend.get(MODEL_KEY)
        await backend.put(desc("written"), b"written-value-51c0")
        await backend.get(desc("written"))
        await backend.list()
        emulator.throttle(times=None)
        monotonic.advance(1.5)
        await backend.get(MODEL_KEY)  # stale, logged as such
        monotonic.advance(10)
        for call in (backend.get(MODEL_KEY), backend.put(MODEL_KEY, b"written-value-51c0")):
            try:
                await call
            except StorageUnavailableError as exc:
                errors.append(exc)
        emulator.clear_faults()
        emulator.go_down("reset")
        try:
            await backend.delete(MODEL_KEY)
        except StorageUnavailableError as exc:
            errors.append(exc)
    assert len(errors) == 3
    texts = [caplog.text, repr(backend), repr(backend.settings)]
    texts += [str(e) + repr(e) for error in errors for e in _chain(error)]
    for text in texts:
        for secret in secrets:
            assert secret not in text


# ---------------------------------------------------------------- fakes and wrapping


class ScriptedReader:
    gateway = "instance"

    def __init__(self, *results: object) -> None:
        self.results = list(results)
        self.calls = 0

    async def get_secret_value(self, _name: str) -> SecretValue:
        self.calls += 1
        result = self.results.pop(0)
        if isinstance(result, BaseException):
            raise result
        assert isinstance(result, SecretValue)
        return result

    async def aclose(self) -> None:
        return


def _settings(**overrides):
    return AliyunKmsSettings(
        kms_instance_id="kst-x", client_key="{}", password="pw", cert_pem="pem", **overrides
    )


async def test_unexpected_client_exceptions_are_wrapped(make_backend):
    backend = make_backend(_settings(), instance_client=ScriptedReader(RuntimeError("boom")))
    with pytest.raises(StorageUnavailableError, match="aliyun_kms backend get failed"):
        await backend.get(MODEL_KEY)


async def test_error_codes_are_sanitised_in_messages(make_backend):
    evil = KmsRequestError(
        gateway="instance", operation="GetSecretValue", kind=ErrorKind.REJECTED, code="Bad\ncode"
    )
    backend = make_backend(_settings(), instance_client=ScriptedReader(evil))
    with pytest.raises(StorageUnavailableError) as info:
        await backend.get(MODEL_KEY)
    assert str(info.value) == "aliyun kms unavailable: request rejected"


# ---------------------------------------------------------------- StorageBackend conformance


async def test_conformance(emulator, both, make_backend):
    backend = make_backend(both(max_resource_bytes=64))
    assert isinstance(backend, StorageBackend)
    assert backend.kind == "aliyun_kms"
    # not found
    with pytest.raises(ResourceNotFoundError):
        await backend.get(desc("nothing-here"))
    # round trip, replace, list sorted, delete
    await backend.put(desc("b-key"), b"\x00binary\xff")
    await backend.put(desc("a-key"), b"text")
    await backend.put(desc("a-key"), b"text 2")
    assert await backend.get(desc("a-key")) == b"text 2"
    assert await backend.get(desc("b-key")) == b"\x00binary\xff"
    assert await backend.list() == [desc("a-key"), desc("b-key"), MODEL_KEY]
    await backend.delete(desc("a-key"))
    with pytest.raises(ResourceNotFoundError):
        await backend.get(desc("a-key"))
    with pytest.raises(ResourceNotFoundError):
        await backend.delete(desc("a-key"))
    # size cap on write (no KMS call) and on read
    before = emulator.count()
    with pytest.raises(ResourceTooLargeError):
        await backend.put(desc("big"), b"x" * 65)
    assert emulator.count() == before
    emulator.create_secret("big", "y" * 65)
    with pytest.raises(ResourceTooLargeError):
        await backend.get(desc("big"))


def test_repr_names_gateways_not_secrets(both, make_backend):
    backend = make_backend(both())
    text = repr(backend)
    assert "InstanceGatewayClient" in text
    assert "SharedGatewayClient" in text
    assert "naming=tag" in text
    assert isinstance(backend, AliyunKmsBackend)
