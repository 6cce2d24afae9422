# SPDX-License-Identifier: Apache-2.0
"""The client TDX attester against a fake configfs-tsm and a test PKI quote."""

from __future__ import annotations

import base64

import pytest

from attestation.base import NOT_PROVIDED
from attestation.tdx.eventlog import parse_event_log
from attestation.tdx.quote import parse_quote
from attestation.tdx.verifier import TdxVerifier
from kbs.client.tdx_attester import TdxAttester, TdxAttesterError, trim_ccel
from support.fake_tsm import FakeTsm
from support.tdx_pki import AT, StaticCollateralSource, TestPki


@pytest.fixture(scope="module")
def pki():
    return TestPki.create()


@pytest.fixture
def ccel_table(shared_dir, tmp_path):
    # An OVMF-style CCEL ACPI table: the log padded with 0xFF to 64 KiB.
    raw = (shared_dir / "testdata/trustee/eventlog-CCEL_data_ovmf").read_bytes()
    path = tmp_path / "CCEL"
    path.write_bytes(raw)
    return path, parse_event_log(raw)


async def test_evidence_round_trip(tmp_path, monkeypatch, pki, ccel_table):
    path, log = ccel_table
    rtmrs = [log.replay(i) for i in range(1, 5)]
    tsm = FakeTsm(tmp_path / "tsm", lambda rd: pki.quote(report_data=rd, rtmrs=rtmrs)).install(
        monkeypatch
    )
    attester = TdxAttester(configfs_root=tsm.root, ccel_path=path)
    digest = bytes(range(48))
    evidence = await attester.evidence(digest)
    assert set(evidence) == {"quote", "cc_eventlog"}
    assert tsm.report_data == [digest + bytes(16)]
    quote = parse_quote(base64.b64decode(evidence["quote"], validate=True))
    assert quote.report.report_data == digest + bytes(16)
    eventlog = base64.b64decode(evidence["cc_eventlog"], validate=True)
    assert len(eventlog) < path.stat().st_size  # trimmed
    assert eventlog.endswith(b"\xff" * 8)
    assert parse_event_log(eventlog) == log
    assert list(tsm.root.iterdir()) == []  # entry removed
    # The server side accepts it.
    verifier = TdxVerifier(
        collateral=StaticCollateralSource(pki.collateral()), root_ca_der=pki.root_der
    )
    result = await verifier.verify(evidence, report_data=digest, init_data_hash=NOT_PROVIDED, at=AT)
    assert result.claims["tcb_status"] == "UpToDate"


async def test_no_ccel(tmp_path, monkeypatch, pki):
    tsm = FakeTsm(tmp_path / "tsm", lambda rd: pki.quote(report_data=rd)).install(monkeypatch)
    attester = TdxAttester(configfs_root=tsm.root, ccel_path=tmp_path / "missing")
    evidence = await attester.evidence(b"")
    assert evidence["cc_eventlog"] is None
    assert tsm.report_data == [bytes(64)]


async def test_aael_is_appended(tmp_path, monkeypatch, pki, ccel_table):
    path, _ = ccel_table
    aael = tmp_path / "aael"
    aael.write_bytes(b"")
    tsm = FakeTsm(tmp_path / "tsm", lambda rd: pki.quote(report_data=rd)).install(monkeypatch)
    evidence = await TdxAttester(configfs_root=tsm.root, ccel_path=path, aael_path=aael).evidence(
        b"x"
    )
    assert base64.b64decode(evidence["cc_eventlog"]).endswith(b"\xff" * 8)


async def test_generation_race_is_detected(tmp_path, monkeypatch, pki):
    tsm = FakeTsm(tmp_path / "tsm", lambda rd: pki.quote(report_data=rd), extra_generations=1)
    tsm.install(monkeypatch)
    with pytest.raises(TdxAttesterError, match="raced"):
        await TdxAttester(configfs_root=tsm.root, ccel_path=tmp_path / "none").evidence(b"x")
    assert list(tsm.root.iterdir()) == []


async def test_wrong_provider(tmp_path, monkeypatch, pki):
    tsm = FakeTsm(tmp_path / "tsm", pki.quote, provider="sev_guest").install(monkeypatch)
    with pytest.raises(TdxAttesterError, match="sev_guest"):
        await TdxAttester(configfs_root=tsm.root, ccel_path=tmp_path / "none").evidence(b"x")


async def test_report_data_too_long(tmp_path):
    with pytest.raises(ValueError, match="64"):
        await TdxAttester(configfs_root=tmp_path).evidence(bytes(65))


async def test_no_configfs(tmp_path):
    with pytest.raises(TdxAttesterError, match="entry"):
        await TdxAttester(configfs_root=tmp_path / "nope", ccel_path=tmp_path / "none").evidence(
            b"x"
        )


def test_detect(tmp_path, monkeypatch, pki):
    assert not TdxAttester.detect(
        configfs_root=tmp_path / "nope", tdx_guest_device=tmp_path / "dev"
    )
    device = tmp_path / "tdx_guest"
    device.write_bytes(b"")
    assert TdxAttester.detect(configfs_root=tmp_path / "nope", tdx_guest_device=device)
    sev = FakeTsm(tmp_path / "sev", pki.quote, provider="sev_guest").install(monkeypatch)
    assert not TdxAttester.detect(configfs_root=sev.root, tdx_guest_device=tmp_path / "dev")
    tdx = FakeTsm(tmp_path / "tdx", pki.quote, provider="tdx_guest")
    tdx.provider = "tdx_guest"
    monkeypatch.setattr(
        "kbs.client.tdx_attester._new_report_dir", lambda root: _plain_entry(root, "tdx_guest")
    )
    assert TdxAttester.detect(configfs_root=tdx.root, tdx_guest_device=tmp_path / "dev")


def _plain_entry(root, provider):
    entry = root / "probe"
    entry.mkdir()
    (entry / "provider").write_text(provider + "\n")
    return entry


def test_trim_ccel_variants(shared_dir):
    raw = (shared_dir / "testdata/trustee/eventlog-CCEL_data_ovmf").read_bytes()
    trimmed = trim_ccel(raw)
    assert raw.startswith(trimmed)
    assert raw[len(trimmed) : len(trimmed) + 8] == b"\xff" * 8
    assert trim_ccel(trimmed) == trimmed
    assert trim_ccel(b"garbage") == b"garbage"
