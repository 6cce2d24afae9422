# SPDX-License-Identifier: Apache-2.0
"""TDX attestation end to end over HTTP: test PKI quotes, a loopback fake PCCS, the real app.

The guest side is the real client (``KbsClient`` + ``TdxAttester`` on a fake configfs-tsm)
for the happy path, and :class:`PkiAttester` for the negative cases. The server side is
``create_app`` with the TDX verifier built from settings (test root through
``insecure_root_ca_path``, the fake PCCS as ``collateral_services``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import struct
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
import rfc8785

from kbs.client.api import KbsClientError
from kbs.client.tdx_attester import TdxAttester
from kbs.clock import FrozenClock
from support.fake_pccs import FakePccs
from support.fake_tsm import FakeTsm
from support.kbs_app import AdminKey, RunningKbs, now_clock, running_kbs
from support.tdx_guest import (
    INIT_DATA_DIGEST,
    INIT_DATA_TOML,
    MR_TD,
    PkiAttester,
    ccel,
    flip_bit,
    tdx_reference_values,
    tdx_settings,
)
from support.tdx_pki import TD_DEBUG, TestPki

# Every test twice: TDX verification inline and in the process pool (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("verify_processes")

SECRET = b"tdx-model-key"
ERR = "https://github.com/confidential-containers/kbs/errors/"
DAY = dt.timedelta(days=1)


@pytest.fixture(scope="module")
def eventlog(shared_dir: Path) -> tuple[bytes, tuple[bytes, ...]]:
    return ccel(shared_dir)


@dataclass
class Tdx:
    """One test's TDX world: a test PKI, its fake PCCS, a clock, a guest, an admin key."""

    tmp_path: Path
    admin_key: AdminKey
    pki: TestPki
    pccs: FakePccs
    clock: FrozenClock
    guest: PkiAttester
    rtmrs: tuple[bytes, ...]

    @contextlib.asynccontextmanager
    async def kbs(
        self, urls: list[str] | None = None, *, reference_values: bool = True, **kwargs
    ) -> AsyncIterator[RunningKbs]:
        """An app whose TDX verifier trusts the test root and asks ``urls`` (default: the PCCS)."""
        settings = tdx_settings(
            self.tmp_path, self.admin_key, self.pki, urls or [self.pccs.url], **kwargs
        )
        async with running_kbs(settings, clock=self.clock, admin_key=self.admin_key) as kbs:
            if reference_values:
                await kbs.admin().set_reference_values(tdx_reference_values(self.rtmrs))
            await kbs.admin().set_resource("cai/tdx/key", SECRET)
            yield kbs


@pytest.fixture
def pccs() -> Iterator[FakePccs]:
    with FakePccs({}) as server:
        yield server


@pytest.fixture
def tdx(tmp_path: Path, admin_key: AdminKey, pccs: FakePccs, eventlog) -> Tdx:
    clock = now_clock()
    pki = TestPki.create(root_cdp=pccs.cdp_url)
    parts = pki.collateral_parts(clock.now())
    pccs.parts = {parts.fmspc: parts}
    raw, rtmrs = eventlog
    guest = PkiAttester(
        pki, eventlog=raw, rtmrs=rtmrs, mr_config_id=INIT_DATA_DIGEST.ljust(48, b"\x00")
    )
    return Tdx(tmp_path, admin_key, pki, pccs, clock, guest, rtmrs)


@pytest.fixture
async def kbs(tdx: Tdx) -> AsyncIterator[RunningKbs]:
    async with tdx.kbs() as kbs:
        yield kbs


def _submod(token: str) -> dict:
    claims = jwt.decode(token, options={"verify_signature": False})
    return claims["submods"]["cpu0"]


async def _attest(
    kbs: RunningKbs, attester: PkiAttester, *, init_data: str | None = INIT_DATA_TOML
):
    async with kbs.guest(attester=attester, init_data=init_data) as client:
        return await client.attest()


async def _refused(kbs: RunningKbs, attester: PkiAttester, **kwargs) -> KbsClientError:
    with pytest.raises(KbsClientError) as info:
        await _attest(kbs, attester, **kwargs)
    return info.value


async def _settle(pccs: FakePccs) -> None:
    """Wait until the fake PCCS threads have logged every request already sent to them."""
    seen = -1
    while pccs.count() != seen:
        seen = pccs.count()
        await asyncio.sleep(0.05)


async def _refreshes_done(kbs: RunningKbs) -> None:
    """Wait for the collateral refreshes the app started in the background."""
    source = kbs.app.state.kbs.tdx.source
    await asyncio.gather(*source._inflight.values(), return_exceptions=True)


# --------------------------------------------------------------------------- happy path


async def test_full_flow_with_the_real_client_attester(
    tdx: Tdx, kbs: RunningKbs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """configfs-tsm quote + CCEL -> affirming under default_cpu -> the secret decrypts."""
    # The ACPI table as the guest reads it: the log, then 0xFF padding.
    assert tdx.guest.eventlog is not None
    ccel_table = tdx.tmp_path / "CCEL"
    ccel_table.write_bytes(tdx.guest.eventlog + b"\xff" * 4096)
    tsm = FakeTsm(
        tdx.tmp_path / "tsm",
        lambda rd: tdx.pki.quote(
            report_data=rd, mr_config_id=INIT_DATA_DIGEST.ljust(48, b"\x00"), rtmrs=tdx.rtmrs
        ),
    ).install(monkeypatch)
    attester = TdxAttester(configfs_root=tsm.root, ccel_path=ccel_table)
    async with kbs.guest(attester=attester, init_data=INIT_DATA_TOML) as client:
        assert await client.get_resource("kbs:///cai/tdx/key") == SECRET
        token = client.token
    assert token is not None
    submod = _submod(token)
    assert submod["ear.status"] == "affirming"
    vector = submod["ear.trustworthiness-vector"]
    assert vector["hardware"] == 2
    assert vector["configuration"] == 2
    assert vector["executables"] in (3, 4)
    evidence = submod["ear.veraison.annotated-evidence"]
    claims = evidence["tdx"]
    assert claims["tcb_status"] == "UpToDate"
    assert claims["collateral_expiration_status"] == "0"
    assert claims["quote"]["body"]["mr_td"] == MR_TD.hex()
    assert claims["td_attributes"]["debug"] is False
    assert len(claims["uefi_event_logs"]) == 5
    # REPORT_DATA is exactly what Trustee's guest builds: SHA-384 of the JCS runtime data,
    # zero-padded to 64 bytes; MRCONFIGID is the init-data digest.
    runtime = evidence["runtime_data_claims"]
    assert set(runtime) == {"nonce", "tee-pubkey", "additional-evidence"}
    expected = hashlib.sha384(rfc8785.dumps(runtime)).digest() + bytes(16)
    assert tsm.report_data == [expected]
    assert evidence["report_data"] == expected.hex()
    assert evidence["init_data"] == INIT_DATA_DIGEST.hex()
    assert evidence["init_data_claims"]["aa.toml"]["token_configs"]["kbs"]["url"] == "http://kbs"


async def test_without_reference_values_the_secret_is_withheld(tdx: Tdx) -> None:
    async with (
        tdx.kbs(reference_values=False) as kbs,
        kbs.guest(attester=tdx.guest, init_data=INIT_DATA_TOML) as client,
    ):
        token = await client.attest()
        assert _submod(token)["ear.status"] != "affirming"
        with pytest.raises(KbsClientError) as info:
            await client.get_resource("kbs:///cai/tdx/key")
    assert info.value.status == 401
    assert info.value.error_type == ERR + "PolicyDeny"


async def test_out_of_date_tcb_is_a_claim_not_a_rejection(tdx: Tdx) -> None:
    """A non-terminal TCB status passes verification; the default policy withholds trust."""
    parts = tdx.pki.collateral_parts(tdx.clock.now(), levels=[tdx.pki.levels[1]])
    tdx.pccs.parts = {parts.fmspc: parts}
    async with tdx.kbs() as kbs:
        submod = _submod(await _attest(kbs, tdx.guest))
    claims = submod["ear.veraison.annotated-evidence"]["tdx"]
    assert claims["tcb_status"] == "OutOfDate"
    assert claims["advisory_ids"] == ["INTEL-SA-00960", "INTEL-SA-00982"]
    assert submod["ear.trustworthiness-vector"]["hardware"] == 97
    assert submod["ear.status"] != "affirming"


# --------------------------------------------------------------------------- evidence faults


def _signed_length(quote: bytes) -> int:
    return 48 + 584 if struct.unpack_from("<H", quote)[0] == 4 else 54 + 648


def _tamper_first_digest(log: bytes) -> bytes:
    header_len = 32 + int.from_bytes(log[28:32], "little")
    # First event after the spec id header: mr index u32, type u32, count u32, alg u16,
    # then its SHA-384 digest. Flip a bit inside the digest.
    return flip_bit(log, header_len + 12 + 2 + 5)


@pytest.mark.parametrize(
    ("case", "detail"),
    [
        ("body bit flip", "tdx quote rejected: invalid signature"),
        ("signature bit flip", "tdx quote rejected: invalid signature"),
        ("wrong report_data", "report_data does not match"),
        ("wrong mr_config_id", "mr_config_id does not match"),
        ("tampered event log", "replay does not match rtmr"),
        ("debug td", "debug td is not accepted"),
        ("truncated quote", "truncated"),
    ],
)
async def test_bad_evidence_is_401(tdx: Tdx, kbs: RunningKbs, case: str, detail: str) -> None:
    guest = tdx.guest
    assert guest.eventlog is not None
    changes = {
        # MRTD lives at body offset 136; the quote signature right after the signature length.
        "body bit flip": {"mutate": lambda q: flip_bit(q, 48 + 136)},
        "signature bit flip": {"mutate": lambda q: flip_bit(q, _signed_length(q) + 4 + 10)},
        "wrong report_data": {"report_data": hashlib.sha384(b"another session").digest()},
        "wrong mr_config_id": {"mr_config_id": hashlib.sha384(b"other init-data").digest()},
        "tampered event log": {"eventlog": _tamper_first_digest(guest.eventlog)},
        "debug td": {"td_attributes": guest.td_attributes | TD_DEBUG},
        "truncated quote": {"mutate": lambda q: q[:-300]},
    }[case]
    error = await _refused(kbs, guest.but(**changes))
    assert error.status == 401, error
    assert error.error_type == ERR + "AttestationError"
    assert detail in str(error).lower()
    # The good guest still gets through: nothing above was a fault of ours.
    submod = _submod(await _attest(kbs, guest))
    assert submod["ear.status"] == "affirming"


async def test_revoked_pck_is_401(tdx: Tdx) -> None:
    pki = tdx.pki
    parts = pki.collateral_parts(tdx.clock.now(), revoked=[pki.pck_leaf.serial_number])
    tdx.pccs.parts = {parts.fmspc: parts}
    async with tdx.kbs() as kbs:
        error = await _refused(kbs, tdx.guest)
        assert error.status == 401
        assert "revoked" in str(error)
        # Another platform under the same CA (not revoked) passes.
        await _attest(kbs, tdx.guest.but(leaf=pki.new_leaf()))


async def test_refused_platform_flag_is_401(tdx: Tdx) -> None:
    async with tdx.kbs(dcap={"allow_smt": False}) as kbs:
        error = await _refused(kbs, tdx.guest)
    assert error.status == 401
    assert "smt is not allowed" in str(error)


async def test_quote_from_another_root_never_reaches_the_pccs(tdx: Tdx, kbs: RunningKbs) -> None:
    error = await _refused(kbs, tdx.guest.but(pki=TestPki.create()))
    assert error.status == 401
    assert "pck" in str(error)
    assert tdx.pccs.count() == 0


async def test_tdx_can_be_disabled(tdx: Tdx) -> None:
    async with tdx.kbs(dcap={"enabled": False}) as kbs:
        assert kbs.app.state.kbs.tdx is None
        error = await _refused(kbs, tdx.guest)
        ready = await kbs.http.get("/readyz")
    assert error.status == 401
    assert "not enabled" in str(error)
    assert "collateral" not in ready.json()["checks"]


# --------------------------------------------------------------------------- collateral and the PCCS


async def test_warm_cache_makes_no_pccs_requests_even_when_it_is_down(
    tdx: Tdx, kbs: RunningKbs
) -> None:
    await _attest(kbs, tdx.guest)
    assert tdx.pccs.count() == 4  # pckcrl, tcb, qe identity, rootcacrl: once
    tdx.pccs.reset()
    await _attest(kbs, tdx.guest)
    tdx.pccs.down = True
    for _ in range(3):
        await _attest(kbs, tdx.guest)
    assert tdx.pccs.count() == 0


async def test_cold_cache_with_pccs_down_is_503(tdx: Tdx, kbs: RunningKbs) -> None:
    tdx.pccs.down = True
    error = await _refused(kbs, tdx.guest)
    assert error.status == 503
    assert error.error_type == ERR + "CollateralUnavailable"
    assert "could not fetch collateral" in str(error)
    assert tdx.pccs.count() > 0
    # Within retry_interval_s the PCCS is not asked again for every guest.
    await _settle(tdx.pccs)
    tdx.pccs.reset()
    error = await _refused(kbs, tdx.guest)
    assert error.status == 503
    assert tdx.pccs.count() == 0
    # Once it is back (and the retry interval has passed), attestation works again.
    tdx.pccs.down = False
    kbs.clock.advance(dt.timedelta(seconds=61))
    await _attest(kbs, tdx.guest)


async def test_guests_arriving_during_a_cold_fetch_share_it(tdx: Tdx, kbs: RunningKbs) -> None:
    """Many guests booting at once on a cold cache: one fetch, nobody gets a 503."""
    tdx.pccs.delay = 0.1
    first = asyncio.ensure_future(_attest(kbs, tdx.guest))
    await asyncio.sleep(0.05)
    others = [asyncio.ensure_future(_attest(kbs, tdx.guest)) for _ in range(3)]
    await asyncio.gather(first, *others)
    assert tdx.pccs.count() == 4


async def test_pccs_error_status_is_503(tdx: Tdx, kbs: RunningKbs) -> None:
    tdx.pccs.status = 500
    error = await _refused(kbs, tdx.guest)
    assert error.status == 503
    assert "HTTP 500" in str(error)


async def test_expired_collateral_is_503_not_401(tdx: Tdx, kbs: RunningKbs) -> None:
    """dcap-qvl refuses expired collateral; when the PCCS has nothing newer, that is ours."""
    await _attest(kbs, tdx.guest)
    expiry = tdx.pccs.parts[tdx.pki.fmspc].next_update
    kbs.clock.set(expiry + dt.timedelta(seconds=1))
    tdx.pccs.reset()
    error = await _refused(kbs, tdx.guest)
    assert error.status == 503
    assert error.error_type == ERR + "CollateralUnavailable"
    assert "not valid now" in str(error)
    assert tdx.pccs.count() > 0  # it did ask for newer collateral


async def test_stale_collateral_is_served_through_an_outage_until_it_expires(
    tdx: Tdx, kbs: RunningKbs
) -> None:
    await _attest(kbs, tdx.guest)
    expiry = tdx.pccs.parts[tdx.pki.fmspc].next_update
    tdx.pccs.down = True
    kbs.clock.set(expiry - dt.timedelta(hours=2))  # due for refresh, still valid
    await _attest(kbs, tdx.guest)
    kbs.clock.set(expiry)  # TCB Info/QE Identity are valid up to nextUpdate inclusive...
    error = await _refused(kbs, tdx.guest)  # ... but a CRL is not valid at its nextUpdate
    assert error.status == 503


async def test_stale_collateral_is_served_without_waiting_for_a_hanging_pccs(
    tdx: Tdx, kbs: RunningKbs
) -> None:
    await _attest(kbs, tdx.guest)
    expiry = tdx.pccs.parts[tdx.pki.fmspc].next_update
    kbs.clock.set(expiry - dt.timedelta(hours=2))  # due for refresh, still valid
    tdx.pccs.delay = 10.0  # answers far later than any guest should wait
    tdx.pccs.reset()
    async with asyncio.timeout(5):
        await _attest(kbs, tdx.guest)
        await _attest(kbs, tdx.guest)
    await _settle(tdx.pccs)
    assert tdx.pccs.count() > 0  # the refresh was started, in the background, once
    assert tdx.pccs.count() <= 4


async def test_failover_to_the_second_pccs(tdx: Tdx) -> None:
    with FakePccs(tdx.pccs.parts) as broken:
        broken.status = 503
        urls = [broken.url, "http://127.0.0.1:9/sgx/certification/v4/", tdx.pccs.url]
        async with tdx.kbs(urls) as kbs:
            await _attest(kbs, tdx.guest)
            ready = (await kbs.http.get("/readyz")).json()
    assert broken.count() > 0
    assert tdx.pccs.count() == 4
    assert ready["collateral"][0]["source_url"] == tdx.pccs.url


async def test_trustee_collateral_service_is_tried_first(tdx: Tdx) -> None:
    with FakePccs(tdx.pccs.parts) as first:
        async with tdx.kbs(dcap={"collateral_service": first.url}) as kbs:
            await _attest(kbs, tdx.guest)
    assert first.count() == 4
    assert tdx.pccs.count() == 0


# --------------------------------------------------------------------------- readiness


async def test_readyz_reports_collateral_per_platform(tdx: Tdx, kbs: RunningKbs) -> None:
    pccs, pki = tdx.pccs, tdx.pki
    ready = await kbs.http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["collateral"].startswith("ok: no platform seen yet")
    assert ready.json()["collateral"] == []

    await _attest(kbs, tdx.guest)
    ready = await kbs.http.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["checks"]["collateral"] == "ok"
    (entry,) = body["collateral"]
    assert (entry["fmspc"], entry["ca"], entry["tcb_update_type"]) == (
        pki.fmspc,
        "platform",
        "early",
    )
    assert entry["fresh"] is True
    assert entry["valid"] is True
    assert entry["source_url"] == pccs.url

    expiry = pccs.parts[pki.fmspc].next_update
    pccs.down = True
    kbs.clock.set(expiry - dt.timedelta(hours=2))
    await _attest(kbs, tdx.guest)  # serves the stale copy, refreshes in the background
    await _refreshes_done(kbs)  # ... which fails
    body = (await kbs.http.get("/readyz")).json()
    assert body["checks"]["collateral"].startswith("ok: valid, refresh overdue")
    assert body["collateral"][0]["last_error"]

    kbs.clock.set(expiry + DAY)
    ready = await kbs.http.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["collateral"] == (
        f"no valid collateral for {pki.fmspc}/platform/early"
    )
    pccs.down = False
    pccs.parts = {pki.fmspc: pki.collateral_parts(kbs.clock.now())}
    await _attest(kbs, tdx.guest)
    assert (await kbs.http.get("/readyz")).status_code == 200


# --------------------------------------------------------------------------- metrics


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of sample ``name`` with exactly these labels (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


async def _metrics(kbs: RunningKbs) -> str:
    return (await kbs.http.get("/metrics")).text


async def test_metrics_count_pccs_requests_cache_lookups_and_dcap(
    tdx: Tdx, kbs: RunningKbs
) -> None:
    await _attest(kbs, tdx.guest)  # cold: one fetch of the four pieces
    await _attest(kbs, tdx.guest)  # warm: no PCCS request
    text = await _metrics(kbs)
    for endpoint in ("pckcrl", "tcb", "qe_identity", "rootcacrl"):
        assert _metric(text, "kbs_pccs_requests_total", endpoint=endpoint) == 1
        assert _metric(text, "kbs_pccs_errors_total", endpoint=endpoint) == 0
    assert _metric(text, "kbs_collateral_cache_lookups_total", result="miss") == 1
    assert _metric(text, "kbs_collateral_cache_lookups_total", result="hit") == 1
    assert _metric(text, "kbs_attestation_successes_total", tee_type="tdx") == 2
    verified = {"tee": "tdx", "outcome": "ok"}
    assert _metric(text, "kbs_evidence_verification_seconds_count", **verified) == 2
    assert _metric(text, "kbs_evidence_verification_seconds_sum", **verified) > 0
    # The PCCS URL never appears: endpoint kinds only.
    assert tdx.pccs.origin not in text


async def test_metrics_count_pccs_errors_as_attestation_errors(tdx: Tdx, kbs: RunningKbs) -> None:
    tdx.pccs.status = 500
    assert (await _refused(kbs, tdx.guest)).status == 503
    text = await _metrics(kbs)
    assert _metric(text, "kbs_pccs_errors_total", endpoint="tcb") >= 1
    assert _metric(text, "kbs_collateral_cache_lookups_total", result="miss") >= 1
    # Our dependency failed: an error, not the guest's failure.
    assert _metric(text, "kbs_attestation_errors_total") >= 1
    assert _metric(text, "kbs_attestation_failures_total", tee_type="tdx") == 0
    errored = {"tee": "tdx", "outcome": "error"}
    assert _metric(text, "kbs_evidence_verification_seconds_count", **errored) >= 1


async def test_metrics_count_stale_collateral_served(tdx: Tdx, kbs: RunningKbs) -> None:
    await _attest(kbs, tdx.guest)
    tdx.pccs.down = True
    expiry = tdx.pccs.parts[tdx.pki.fmspc].next_update
    kbs.clock.set(expiry - dt.timedelta(hours=2))  # due for refresh, still valid
    await _attest(kbs, tdx.guest)
    await _refreshes_done(kbs)
    text = await _metrics(kbs)
    assert _metric(text, "kbs_collateral_cache_lookups_total", result="stale") == 1
    assert _metric(text, "kbs_attestation_successes_total", tee_type="tdx") == 2


async def test_metrics_count_a_forged_quote_as_a_tdx_failure(tdx: Tdx, kbs: RunningKbs) -> None:
    forged = PkiAttester(
        tdx.pki,
        eventlog=tdx.guest.eventlog,
        rtmrs=tdx.rtmrs,
        mr_config_id=tdx.guest.mr_config_id,
        mutate=lambda q: flip_bit(q, 48 + 136),
    )
    assert (await _refused(kbs, forged)).status == 401
    text = await _metrics(kbs)
    assert _metric(text, "kbs_attestation_failures_total", tee_type="tdx") == 1
    assert _metric(text, "kbs_attestation_errors_total") == 0
    rejected = {"tee": "tdx", "outcome": "rejected"}
    assert _metric(text, "kbs_evidence_verification_seconds_count", **rejected) == 1
