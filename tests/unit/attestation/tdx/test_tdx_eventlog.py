# SPDX-License-Identifier: Apache-2.0
"""The CC event log parser against the reference parser's own vectors, and replay."""

from __future__ import annotations

import base64
import hashlib
import json
import struct

import pytest

from attestation.tdx.errors import EventLogParseError, EventLogReplayError
from attestation.tdx.eventlog import parse_event_log

VECTORS = [
    ("CCEL_data", "CCEL_data_out.json"),
    ("eventlog-CCEL_data_ovmf", "eventlog-CCEL_data_ovmf_out.json"),
    ("eventlog-CCEL_AAEL_alibabacloud", "eventlog-CCEL_AAEL_alibabacloud_out.json"),
]

# RTMR values the reference's own replay test expects.
REPLAY = {
    "CCEL_data": (
        "2dc712306a963eadb894ad47dbaa17df44814151555aee11cbb843becca88950ffd079664902e6f22c66f7c8213543f4",
        "0fa3be56af61208bbd179dc7b124988eb929319154663c539d6f46445ecac2fec287075047ff7bd1922829fec28cd3cf",
        "00" * 48,
        "00" * 48,
    ),
    "eventlog-CCEL_data_ovmf": (
        "8566f998798db09443b244c62de9a3041fb02e2e6936c4396d784bba2e90177329ec5aba3bb484404f2ab9cc90abe193",
        "775b9f6bfe99f8a31396f0d0218e67ffa796d3b96ccf961cbb0deba48c79c00f082cda1a5567c1c16305f1fc210c13c6",
        "94eaf7a7bf398ed8d888c91057ae0261802e4f3df084213a76ca7f0b5055ac9d2241de43cd58d9e8b49c503bbf25f34a",
        "00" * 48,
    ),
}


def _read(shared_dir, name):
    return (shared_dir / "testdata/trustee" / name).read_bytes()


@pytest.mark.parametrize(("raw", "out"), VECTORS)
def test_reference_vectors(shared_dir, raw, out):
    log = parse_event_log(_read(shared_dir, raw))
    want = json.loads((shared_dir / "testdata/trustee" / out).read_text())
    assert {"uefi_event_logs": log.to_claims()} == want


def test_aael_events_are_detailed(shared_dir):
    log = parse_event_log(_read(shared_dir, "eventlog-CCEL_AAEL_alibabacloud"))
    tags = [e for e in log.entries if e.type_name == "EV_EVENT_TAG"]
    assert tags
    assert all(e.details.get("unicode_name") == "AAEL" for e in tags)
    assert all({"domain", "operation", "content"} <= set(e.details["data"]) for e in tags)


@pytest.mark.parametrize("name", sorted(REPLAY))
def test_replay_matches_reference(shared_dir, name):
    log = parse_event_log(_read(shared_dir, name))
    rtmrs = [bytes.fromhex(h) for h in REPLAY[name]]
    assert [log.replay(i) for i in range(1, 5)] == rtmrs
    log.check_rtmrs(rtmrs)


def test_replay_mismatch_names_the_register(shared_dir):
    log = parse_event_log(_read(shared_dir, "CCEL_data"))
    rtmrs = [bytes.fromhex(h) for h in REPLAY["CCEL_data"]]
    rtmrs[1] = bytes(48)
    with pytest.raises(EventLogReplayError, match="rtmr1"):
        log.check_rtmrs(rtmrs)


def test_replay_sha1_is_refused(shared_dir):
    log = parse_event_log(_read(shared_dir, "CCEL_data"))
    with pytest.raises(EventLogReplayError):
        log.replay(1, 0x0004)


def test_padding_variants(shared_dir):
    raw = _read(shared_dir, "eventlog-CCEL_AAEL_alibabacloud")
    log = parse_event_log(raw)
    # Trim to the end flag, then try no padding, short padding and zero padding.
    body = raw[: raw.index(b"\xff" * 8)]
    for tail in (b"", b"\xff" * 3, b"\x00" * 8, b"\xff" * 100):
        assert parse_event_log(body + tail) == log


# ---------------------------------------------------------------- synthetic logs

HEADER_SHA384 = (
    struct.pack("<II", 0, 3)
    + bytes(20)
    + struct.pack("<I", 33)
    + bytes(24)
    + struct.pack("<I", 1)
    + struct.pack("<HH", 0x0C, 48)
    + b"\x00"
)


def _event(index, event_type, data, digest=None):
    digest = hashlib.sha384(data).digest() if digest is None else digest
    return (
        struct.pack("<III", index, event_type, 1)
        + struct.pack("<H", 0x0C)
        + digest
        + struct.pack("<I", len(data))
        + data
    )


def test_synthetic_log_details_and_replay():
    aael = b'kbs get-resource {"a":[1,2]}'
    tag = struct.pack("<II", 0x4141454C, len(aael)) + aael
    log = parse_event_log(
        HEADER_SHA384
        + _event(1, 0x80000007, b"Calling EFI Application")
        + _event(4, 0x6, tag)
        + _event(2, 0x4, b"\x00\x00\x00\x00", digest=b"\x11" * 48)
    )
    a, b, c = log.entries
    assert a.details == {"string": "Calling EFI Application"}
    assert a.digest_matches_event
    assert b.details["data"] == {
        "domain": "kbs",
        "operation": "get-resource",
        "content": {"a": [1, 2]},
    }
    assert not c.digest_matches_event
    expected = hashlib.sha384(bytes(48) + hashlib.sha384(tag).digest()).digest()
    assert log.replay(4) == expected
    assert log.replay(3) == bytes(48)
    claim = b.to_claim()
    assert claim["type_name"] == "EV_EVENT_TAG"
    assert base64.b64decode(claim["event"]) == tag


def test_aael_content_falls_back_to_string():
    for content, want in [(b"not json", "not json"), (b"1e999", "1e999"), (b"NaN", "NaN")]:
        text = b"d op " + content
        tag = struct.pack("<II", 0x4141454C, len(text)) + text
        log = parse_event_log(HEADER_SHA384 + _event(4, 0x6, tag))
        assert log.entries[0].details["data"]["content"] == want


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "truncated"),
        (struct.pack("<II", 0, 4) + bytes(40), "spec id"),
        (HEADER_SHA384 + _event(1, 0x7777, b""), "unknown event type"),
        (HEADER_SHA384 + _event(1, 0x80000007, b"\xff\xfe"), "not utf-8"),
        (HEADER_SHA384 + _event(1, 0x8000000A, b"\x00"), "description"),
        (HEADER_SHA384 + _event(1, 0x80000003, bytes(24) + struct.pack("<Q", 2)), "device path"),
        (HEADER_SHA384 + _event(1, 0x80000001, bytes(16)), "lengths"),
        (HEADER_SHA384 + _event(1, 0x6, struct.pack("<II", 0x4141454C, 3) + b"a b"), "aael"),
        (HEADER_SHA384 + _event(1, 0x80000007, b"x")[:-1], "truncated"),
    ],
)
def test_malformed_logs(data, match):
    with pytest.raises(EventLogParseError, match=match):
        parse_event_log(data)


def test_unknown_digest_algorithm():
    event = struct.pack("<III", 1, 0x80000007, 1) + struct.pack("<H", 0x99) + bytes(48)
    with pytest.raises(EventLogParseError, match="unknown algorithm"):
        parse_event_log(HEADER_SHA384 + event)


def test_device_paths_render_like_the_reference():
    def node(kind, sub, payload):
        return struct.pack("<BBH", kind, sub, 4 + len(payload)) + payload

    guid = bytes.fromhex("72f728144ab61e44b8c39ebdd7f893c7")
    path = (
        node(2, 1, struct.pack("<II", 0x0A0341D0, 0))
        + node(1, 1, b"\x01\x00")
        + node(3, 0x0B, bytes.fromhex("5254001234560000") + bytes(24) + b"\x01")
        + node(
            3,
            0x0C,
            struct.pack("<II", 0x0100000A, 0x0200000A) + bytes(4) + b"\x06\x00\x01" + bytes(8),
        )
        + node(4, 3, guid)
        + node(4, 4, "kernel\x00".encode("utf-16-le"))
        + node(5, 1, struct.pack("<HH", 2, 0) + b"disk\x00")
        + node(3, 0x17, b"\x01")
        + b"\x7f\xff\x04\x00"
    )
    event = bytes(24) + struct.pack("<Q", len(path)) + path
    log = parse_event_log(HEADER_SHA384 + _event(2, 0x80000003, event))
    assert log.entries[0].details == {
        "device_paths": [
            "ACPI(PNP0A03,0)",
            "Pci(1,0)",
            "Mac(525400123456,0x01)",
            "IPv4(2.0.0.10,TCP,Static,1.0.0.10)",  # wire 10.0.0.x, read LE like the reference
            "VenMedia(1428F772-B64A-441E-B8C3-9EBDD7F893C7,)",
            "File(kernel)",
            "BBS(HARD_DRIVE,disk,0)",
            "Path(3,23,01)",
        ]
    }
