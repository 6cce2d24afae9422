# SPDX-License-Identifier: Apache-2.0
"""Pure parser and replayer for the confidential-computing event log (CCEL).

The log is the TCG2 "crypto agile" event log as the guest reads it from
``/sys/firmware/acpi/tables/data/CCEL`` (possibly followed by the attestation agent's
``EV_EVENT_TAG`` events and padding of ``0xFF`` or ``0x00``). Replaying the SHA-384
digests of each CC measurement register index 1..4 must give RTMR0..RTMR3 of the quote.

The ``uefi_event_logs`` claims reproduce the reference parser
(confidential-containers/trustee ``deps/eventlog``) field for field, including its
quirks, because attestation policies written for the reference match on them. Where
the reference would fail the whole log (non-UTF-8 text in a text event, unknown event
types or digest algorithms, SHA-1 digests), so do we; where it would panic on a short
buffer we raise :class:`~attestation.tdx.errors.EventLogParseError`.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import logging
import struct
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from attestation.tdx.errors import EventLogParseError, EventLogReplayError

_logger = logging.getLogger(__name__)

__all__ = [
    "ALG_SHA384",
    "MAX_DEVICE_PATH_NODES",
    "MAX_DIGESTS_PER_EVENT",
    "MAX_EVENTS",
    "EventDigest",
    "EventLog",
    "EventLogEntry",
    "parse_event_log",
]

#: Real logs have tens to a few hundred events; bounds keep hostile logs cheap.
MAX_EVENTS: Final = 16384
#: A crypto-agile event carries one digest per bank; TDX has one bank.
MAX_DIGESTS_PER_EVENT: Final = 8
#: Nodes of one UEFI device path we render before giving up.
MAX_DEVICE_PATH_NODES: Final = 64
#: Nesting the reference (serde_json) accepts in AAEL JSON content.
_MAX_JSON_DEPTH: Final = 128

ALG_SHA384: Final = 0x000C

#: TCG algorithm id -> (claim name, hashlib name or None if the reference cannot hash it).
_ALGORITHMS: Final[Mapping[int, tuple[str, str | None]]] = {
    0x0001: ("RSA", None),
    0x0003: ("TDES", None),
    0x0004: ("SHA-1", None),
    0x000B: ("SHA-256", "sha256"),
    0x000C: ("SHA-384", "sha384"),
    0x000D: ("SHA-512", "sha512"),
    0x0012: ("SM3", "sm3"),
}

EV_NO_ACTION: Final = 0x3

#: TCG event type -> reference name (``type_name``).
_EVENT_TYPES: Final[Mapping[int, str]] = {
    0x0: "EV_PREBOOT_CERT",
    0x1: "EV_POST_CODE",
    0x2: "EV_UNUSED",
    0x3: "EV_NO_ACTION",
    0x4: "EV_SEPARATOR",
    0x5: "EV_ACTION",
    0x6: "EV_EVENT_TAG",
    0x7: "EV_S_CRTM_CONTENTS",
    0x8: "EV_S_CRTM_VERSION",
    0x9: "EV_CPU_MICROCODE",
    0xA: "EV_PLATFORM_CONFIG_FLAGS",
    0xB: "EV_TABLE_OF_DEVICES",
    0xC: "EV_COMPACT_HASH",
    0xD: "EV_IPL",
    0xE: "EV_IPL_PARTITION_DATA",
    0xF: "EV_NONHOST_CODE",
    0x10: "EV_NONHOST_CONFIG",
    0x11: "EV_NONHOST_INFO",
    0x12: "EV_OMIT_BOOT_DEVICE_EVENTS",
    0x80000000: "EV_EFI_EVENT_BASE",
    0x80000001: "EV_EFI_VARIABLE_DRIVER_CONFIG",
    0x80000002: "EV_EFI_VARIABLE_BOOT",
    0x80000003: "EV_EFI_BOOT_SERVICES_APPLICATION",
    0x80000004: "EV_EFI_BOOT_SERVICES_DRIVER",
    0x80000005: "EV_EFI_RUNTIME_SERVICES_DRIVER",
    0x80000006: "EV_EFI_GPT_EVENT",
    0x80000007: "EV_EFI_ACTION",
    0x80000008: "EV_EFI_PLATFORM_FIRMWARE_BLOB",
    0x80000009: "EV_EFI_HANDOFF_TABLES",
    0x8000000A: "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
    0x8000000B: "EV_EFI_HANDOFF_TABLES2",
    0x8000000C: "EV_EFI_VARIABLE_BOOT2",
    0x80000010: "EV_EFI_HCRTM_EVENT",
    0x800000E0: "EV_EFI_VARIABLE_AUTHORITY",
    0x800000E1: "EV_EFI_SPDM_FIRMWARE_BLOB",
    0x800000E2: "EV_EFI_SPDM_FIRMWARE_CONFIG",
}


# Events and digests are NamedTuples (immutable, built in one C call): a log has
# hundreds of them and the parser runs on every attestation.


class EventDigest(NamedTuple):
    """One digest of an event (one per PCR bank)."""

    algorithm: int
    digest: bytes

    @property
    def algorithm_name(self) -> str:
        """The reference's name for the algorithm (``SHA-384``...)."""
        return _ALGORITHMS[self.algorithm][0]


class EventLogEntry(NamedTuple):
    """One measured event (the Spec ID header event is not an entry).

    ``mr_index`` is the CC measurement register (1..4 = RTMR0..3); the claim calls it
    ``index`` (a NamedTuple field cannot: ``tuple.index`` is a method).
    """

    mr_index: int
    event_type: int
    digests: tuple[EventDigest, ...]
    event: bytes
    details: Mapping[str, Any]
    digest_matches_event: bool

    @property
    def type_name(self) -> str:
        """The reference's event type name (``EV_EFI_ACTION``...)."""
        return _EVENT_TYPES[self.event_type]

    def to_claim(self) -> dict[str, Any]:
        """This entry as one element of the ``uefi_event_logs`` claim."""
        return {
            "details": dict(self.details),
            "digest_matches_event": self.digest_matches_event,
            "digests": [{"alg": d.algorithm_name, "digest": d.digest.hex()} for d in self.digests],
            "event": base64.b64encode(self.event).decode("ascii"),
            "index": self.mr_index,
            "type_name": self.type_name,
        }


@dataclass(frozen=True, slots=True)
class EventLog:
    """A parsed CC event log."""

    entries: tuple[EventLogEntry, ...]

    def to_claims(self) -> list[dict[str, Any]]:
        """The ``uefi_event_logs`` claim value."""
        return [entry.to_claim() for entry in self.entries]

    def replay(self, index: int, algorithm: int = ALG_SHA384) -> bytes:
        """Replay the digests of CC measurement register ``index``: ``m = H(m || digest)``.

        Raises:
            EventLogReplayError: ``algorithm`` cannot be replayed.
        """
        try:
            name, hash_name = _ALGORITHMS[algorithm]
        except KeyError:
            raise EventLogReplayError(f"unknown digest algorithm {algorithm:#x}") from None
        if hash_name is None:
            raise EventLogReplayError(f"cannot replay {name} digests")
        try:
            value = bytes(hashlib.new(hash_name).digest_size)
            for entry in self.entries:
                if entry.mr_index != index:
                    continue
                for digest in entry.digests:
                    if digest.algorithm == algorithm:
                        value = hashlib.new(hash_name, value + digest.digest).digest()
        except ValueError:  # e.g. an OpenSSL build without SM3
            raise EventLogReplayError(f"{name} is not available here") from None
        return value

    def check_rtmrs(self, rtmrs: Sequence[bytes]) -> None:
        """Require that replaying CC MR 1..4 (SHA-384) gives ``rtmrs`` (RTMR0..RTMR3).

        Raises:
            EventLogReplayError: a replayed value differs from the quote's RTMR.
        """
        for rtmr_index, expected in enumerate(rtmrs):
            if self.replay(rtmr_index + 1) != expected:
                raise EventLogReplayError(f"cc event log replay does not match rtmr{rtmr_index}")


# ----------------------------------------------------------------------------- reading


class _Cursor:
    """Little-endian reads over the log with one error type for every overrun."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, size: int, what: str) -> bytes:
        if size < 0 or self.pos + size > len(self.data):
            raise EventLogParseError(f"cc event log truncated in {what}")
        out = self.data[self.pos : self.pos + size]
        self.pos += size
        return out

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "little")

    def u32(self, what: str) -> int:
        return int.from_bytes(self.take(4, what), "little")


def _parse_spec_id(cursor: _Cursor) -> dict[int, int]:
    """Read the first event (TCG_EfiSpecIdEvent) and return algorithm -> digest size."""
    # The header event is in the SHA-1 log format: index, type, 20-byte digest, size.
    cursor.u32("header index")
    event_type = cursor.u32("header event type")
    if event_type != EV_NO_ACTION:
        # The reference tolerates this and then misreads the rest; we refuse.
        raise EventLogParseError("cc event log does not start with a spec id event")
    cursor.take(20, "header digest")
    size = cursor.u32("header size")
    spec = _Cursor(cursor.take(size, "spec id event"))
    # signature (16), platform class (4), version (3), uintn size (1).
    spec.take(24, "spec id event")
    count = spec.u32("spec id algorithm count")
    sizes: dict[int, int] = {}
    for _ in range(count):
        algorithm = spec.u16("spec id algorithm")
        digest_size = spec.u16("spec id digest size")
        if algorithm not in _ALGORITHMS:
            raise EventLogParseError(f"cc event log uses unknown algorithm {algorithm:#x}")
        sizes[algorithm] = digest_size
    vendor_size = spec.take(1, "spec id vendor info size")[0]
    spec.take(vendor_size, "spec id vendor info")
    if spec.pos != size:
        raise EventLogParseError("cc event log spec id event has trailing bytes")
    return sizes


_EVENT_HEAD: Final = struct.Struct("<III")  # CC MR index, event type, digest count
_ONES_8: Final = b"\xff" * 8
_ZEROS_8: Final = bytes(8)


def _is_padding(data: bytes) -> bool:
    return data == b"\xff" * len(data) or data == bytes(len(data))


def parse_event_log(data: bytes) -> EventLog:
    """Parse a TCG2 crypto-agile CC event log.

    Args:
        data: the raw log; it may be followed by ``0xFF`` or ``0x00`` padding.

    Returns:
        The events after the Spec ID header event, with their reference details.

    Raises:
        EventLogParseError: the log is malformed, uses an unknown event type or digest
            algorithm, or has an event whose data the reference parser rejects.
    """
    cursor = _Cursor(bytes(data))
    sizes = _parse_spec_id(cursor)
    buf = cursor.data
    end = len(buf)
    pos = cursor.pos
    entries: list[EventLogEntry] = []
    while pos < end:
        # 1. End of the log: an index+type word of all ones or all zeros, or a short tail
        #    of padding.
        head = buf[pos : pos + 8]
        if head in (_ONES_8, _ZEROS_8) or _is_padding(head):
            break
        if len(entries) >= MAX_EVENTS:
            raise EventLogParseError("cc event log has too many events")
        # 2. Event header and digests (bounds-checked: a short field is a truncation).
        if pos + _EVENT_HEAD.size > end:
            raise EventLogParseError("cc event log truncated in event header")
        index, event_type, count = _EVENT_HEAD.unpack_from(buf, pos)
        pos += _EVENT_HEAD.size
        if event_type not in _EVENT_TYPES:
            raise EventLogParseError(f"cc event log has unknown event type {event_type:#x}")
        if count > MAX_DIGESTS_PER_EVENT:
            raise EventLogParseError("cc event log event has too many digests")
        digests, pos = _read_digests(buf, pos, end, count, sizes)
        if pos + 4 > end:
            raise EventLogParseError("cc event log truncated in event size")
        event_end = pos + 4 + int.from_bytes(buf[pos : pos + 4], "little")
        if event_end > end:
            raise EventLogParseError("cc event log truncated in event data")
        event = buf[pos + 4 : event_end]
        pos = event_end
        # 3. Details and the digest check, as the reference computes them.
        matches = _digests_match(event, digests)
        details = _DETAIL_PARSERS.get(event_type, _blank)(event)
        entries.append(
            EventLogEntry(
                mr_index=index,
                event_type=event_type,
                digests=tuple(digests),
                event=event,
                details=details,
                digest_matches_event=matches,
            )
        )
    return EventLog(entries=tuple(entries))


def _read_digests(
    buf: bytes, pos: int, end: int, count: int, sizes: Mapping[int, int]
) -> tuple[list[EventDigest], int]:
    """Read ``count`` (algorithm, digest) pairs at ``pos``; return them and the new offset."""
    digests = []
    for _ in range(count):
        if pos + 2 > end:
            raise EventLogParseError("cc event log truncated in digest algorithm")
        algorithm = int.from_bytes(buf[pos : pos + 2], "little")
        if algorithm not in _ALGORITHMS:
            raise EventLogParseError(f"cc event log uses unknown algorithm {algorithm:#x}")
        size = sizes.get(algorithm)
        if size is None:
            raise EventLogParseError(f"cc event log has no size for algorithm {algorithm:#x}")
        pos += 2
        if pos + size > end:
            raise EventLogParseError("cc event log truncated in digest")
        digests.append(EventDigest(algorithm, buf[pos : pos + size]))
        pos += size
    return digests, pos


def _digests_match(event: bytes, digests: Sequence[EventDigest]) -> bool:
    for digest in digests:
        name, hash_name = _ALGORITHMS[digest.algorithm]
        if hash_name is None:
            raise EventLogParseError(f"cc event log digest algorithm {name} is not supported")
        try:
            computed = hashlib.new(hash_name, event).digest()
        except ValueError:  # e.g. an OpenSSL build without SM3
            raise EventLogParseError(
                f"cc event log digest algorithm {name} is not available"
            ) from None
        if computed != digest.digest:
            return False
    return True


# ----------------------------------------------------------------------------- details


def _blank(_event: bytes) -> dict[str, Any]:
    return {}


def _string(text: str) -> dict[str, Any]:
    return {"string": text}


def _utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise EventLogParseError(f"cc event log {what} is not utf-8") from None


def _simple(event: bytes) -> dict[str, Any]:
    # EV_POST_CODE, EV_ACTION, EV_COMPACT_HASH, EV_OMIT_BOOT_DEVICE_EVENTS, EV_EFI_ACTION.
    return _string(_utf8(event, "event text"))


def _simple_string(event: bytes) -> dict[str, Any]:
    # EV_EFI_PLATFORM_FIRMWARE_BLOB2 / EV_EFI_HANDOFF_TABLES2: a length-prefixed
    # description; the reference keeps bytes 1..length (dropping the last one).
    if not event:
        raise EventLogParseError("cc event log description is empty")
    length = event[0]
    if length < 1 or len(event) < length:
        raise EventLogParseError("cc event log description is truncated")
    return _string(_utf8(event[1:length], "description"))


def _is_control(char: str) -> bool:
    return unicodedata.category(char) == "Cc"


def _platform_config_flags(event: bytes) -> dict[str, Any]:
    try:
        text = event.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    text = text.replace("\x10", " ")
    if text.isprintable():  # no control characters (Cc) at all: skip the per-character pass
        return _string(text)
    return _string("".join(c for c in text if not _is_control(c)))


def _ipl(event: bytes) -> dict[str, Any]:
    if len(event) < 2:  # noqa: PLR2004
        raise EventLogParseError("cc event log ipl event is too short")
    if event[:2] == b".\x00":
        # GCE-style UTF-16 text after a two-byte prefix; the last two bytes are dropped.
        rest = len(event) - 2
        if rest == 0 or rest % 2:
            raise EventLogParseError("cc event log ipl event is not utf-16")
        return _string(event[2:rest].decode("utf-16-le", "replace"))
    cut = event.find(b"\x00")
    text = event if cut < 0 else event[:cut]
    try:
        return _string(text.decode("utf-8"))
    except UnicodeDecodeError:
        return _string(event.hex())


def _efi_variable(event: bytes) -> dict[str, Any]:
    if len(event) < 16:  # noqa: PLR2004
        raise EventLogParseError("cc event log efi variable lacks a guid")
    guid = event[:16]
    if len(event) < 32:  # noqa: PLR2004
        raise EventLogParseError("cc event log efi variable lacks its lengths")
    name_length, data_length = struct.unpack_from("<QQ", event, 16)
    name_end = 32 + 2 * name_length
    if name_end > len(event):
        raise EventLogParseError("cc event log efi variable name is truncated")
    try:
        name = event[32:name_end].decode("utf-16-le")
    except UnicodeDecodeError:
        raise EventLogParseError("cc event log efi variable name is not utf-16") from None
    variable_data = ""
    if data_length > 0:
        if name_end + data_length > len(event):
            raise EventLogParseError("cc event log efi variable data is truncated")
        variable_data = base64.b64encode(event[name_end : name_end + data_length]).decode()
    return {
        "unicode_name": name,
        "unicode_name_length": name_length,
        "variable_data": variable_data,
        "variable_data_length": data_length,
        "variable_name": "-".join(
            guid[a:b].hex() for a, b in ((0, 4), (4, 6), (6, 8), (8, 10), (10, 16))
        ),
    }


_AAEL_EVENT_ID: Final = 0x4141454C


def _json_depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_json_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_json_depth(v) for v in value), default=0)
    return 0


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(text)  # serde_json refuses out-of-range numbers
    return value


def _aael_content(text: str) -> Any:
    # The reference tries strict JSON (serde_json) and falls back to the raw string.
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
        json.dumps(value, ensure_ascii=False).encode("utf-8")  # no lone surrogates
    except (ValueError, RecursionError):
        return text
    if _json_depth(value) > _MAX_JSON_DEPTH:
        return text
    return value


def _event_tag(event: bytes) -> dict[str, Any]:
    if len(event) < 8:  # noqa: PLR2004
        raise EventLogParseError("cc event log event tag is too short")
    event_id, size = struct.unpack_from("<II", event, 0)
    if 8 + size > len(event):
        raise EventLogParseError("cc event log event tag data is truncated")
    data = event[8 : 8 + size]
    details: dict[str, Any] = _string(data.decode("utf-8", "replace").replace("\x00", ""))
    if event_id == _AAEL_EVENT_ID:
        # Attestation-agent event: "<domain> <operation> <content>".
        text = _utf8(data, "aael event")
        parts = text.split(" ", 2)
        if len(parts) < 3:  # noqa: PLR2004
            raise EventLogParseError("cc event log aael event lacks domain or operation")
        details["data"] = {
            "domain": parts[0],
            "operation": parts[1],
            "content": _aael_content(parts[2]),
        }
        details["unicode_name"] = "AAEL"
    return details


# ------------------------------------------------------------------- UEFI device paths


def _uefi_guid(raw: bytes) -> str:
    a, b, c = struct.unpack_from("<IHH", raw, 0)
    d = raw[8:16].hex().upper()
    return f"{a:08X}-{b:04X}-{c:04X}-{d[:4]}-{d[4:]}"


def _path_pci(data: bytes) -> str:
    if len(data) < 2:  # noqa: PLR2004
        raise ValueError("short")
    return f"Pci({data[0]},{data[1]})"


def _path_acpi(data: bytes) -> str:
    if len(data) < 8:  # noqa: PLR2004
        raise ValueError("short")
    hid, uid = struct.unpack_from("<II", data, 0)
    vendor = hid & 0xFFFF
    letters = "".join(chr((vendor >> shift & 0x1F) + ord("@")) for shift in (10, 5, 0))
    return f"ACPI({letters}{hid >> 16:04X},{uid})"


def _path_fibre_ex(data: bytes) -> str:
    if len(data) < 16:  # noqa: PLR2004
        raise ValueError("short")
    return f"FibreEx(0x{data[0:8].hex()},0x{data[8:16].hex()})"


def _path_usb(data: bytes) -> str:
    if len(data) < 2:  # noqa: PLR2004
        raise ValueError("short")
    return f"USB({data[0]},{data[1]})"


def _path_mac(data: bytes) -> str:
    if len(data) != 33:  # noqa: PLR2004
        raise ValueError("bad mac")
    return f"Mac({data[0:31].hex().rstrip('0').upper()},{data[32]:#04x})"


def _path_ipv4(data: bytes) -> str:
    if len(data) < 23:  # noqa: PLR2004
        raise ValueError("short")
    # The reference reads the addresses as little-endian u32, so octets come out reversed.
    local, remote = struct.unpack_from("<II", data, 0)
    protocol = {6: "TCP", 17: "UDP"}.get(struct.unpack_from("<H", data, 12)[0], "")
    origin = {0: "DHCP", 1: "Static"}.get(data[14], "")
    gateway, mask = struct.unpack_from("<II", data, 15)
    extra = f",{gateway},{mask}" if gateway or mask else ""
    return (
        f"IPv4({ipaddress.IPv4Address(remote)},{protocol},{origin},"
        f"{ipaddress.IPv4Address(local)}{extra})"
    )


def _path_hard_drive(data: bytes) -> str:
    if len(data) < 38:  # noqa: PLR2004
        raise ValueError("short")
    number, start, size = struct.unpack_from("<IQQ", data, 0)
    signature = data[20:36]
    if data[36] == 1:
        kind, sig = "MBR", f"{struct.unpack_from('<I', signature, 0)[0]:#010x}"
    elif data[36] == 2:  # noqa: PLR2004
        kind, sig = "GPT", _uefi_guid(signature)
    else:
        raise ValueError("partition format")
    extent = f",{start:#x},{size:#x}" if number else ""
    return f"HD({number},{kind},{sig}{extent})"


def _path_vendor_media(data: bytes) -> str:
    if len(data) < 16:  # noqa: PLR2004
        raise ValueError("short")
    return f"VenMedia({_uefi_guid(data)},{data[16:].hex()})"


def _path_file(data: bytes) -> str:
    if not data or len(data) % 2:
        raise ValueError("odd")
    return f"File({data[:-2].decode('utf-16-le', 'replace')})"


_BBS_TYPES: Final = {
    0x01: "FLOPPY",
    0x02: "HARD_DRIVE",
    0x03: "CDROM",
    0x04: "PCMCIA",
    0x05: "USB",
    0x06: "EMBEDDED_NETWORK",
    0x80: "DEV",
    0xFF: "UNKNOWN",
}


def _path_bbs(data: bytes) -> str:
    if len(data) < 4:  # noqa: PLR2004
        raise ValueError("short")
    device_type, status = struct.unpack_from("<HH", data, 0)
    description = data[4:].split(b"\x00", 1)[0].decode("utf-8")
    return f"BBS({_BBS_TYPES.get(device_type, str(device_type))},{description},{status})"


_DEVICE_PATHS: Final[Mapping[tuple[int, int], Callable[[bytes], str]]] = {
    (0x01, 0x01): _path_pci,
    (0x02, 0x01): _path_acpi,
    (0x03, 0x15): _path_fibre_ex,
    (0x03, 0x05): _path_usb,
    (0x03, 0x0B): _path_mac,
    (0x03, 0x0C): _path_ipv4,
    (0x04, 0x01): _path_hard_drive,
    (0x04, 0x03): _path_vendor_media,
    (0x04, 0x04): _path_file,
    (0x05, 0x01): _path_bbs,
}


def _device_path_node(kind: int, sub_type: int, data: bytes) -> str:
    render = _DEVICE_PATHS.get((kind, sub_type))
    if render is not None:
        try:
            return render(data)
        except (ValueError, struct.error):
            pass  # the reference falls back to the generic form
    return f"Path({kind},{sub_type},{data.hex()})"


def _boot_services_application(event: bytes) -> dict[str, Any]:
    # UEFI_IMAGE_LOAD_EVENT: location, length, link-time address, device path length,
    # device path. The reference drops the last 4 bytes (the end-of-path node).
    if len(event) < 32:  # noqa: PLR2004
        raise EventLogParseError("cc event log image load event is too short")
    (path_length,) = struct.unpack_from("<Q", event, 24)
    if path_length == 0:
        return {}
    if path_length < 4 or 32 + path_length - 4 > len(event):  # noqa: PLR2004
        raise EventLogParseError("cc event log image device path is truncated")
    path = event[32 : 32 + path_length - 4]
    nodes: list[str] = []
    while True:
        if len(path) < 4:  # noqa: PLR2004
            raise EventLogParseError("cc event log device path node is truncated")
        if len(nodes) >= MAX_DEVICE_PATH_NODES:
            raise EventLogParseError("cc event log device path has too many nodes")
        kind, sub_type, length = struct.unpack_from("<BBH", path, 0)
        if length < 4 or length > len(path):  # noqa: PLR2004
            raise EventLogParseError("cc event log device path node has a bad length")
        nodes.append(_device_path_node(kind, sub_type, path[4:length]))
        path = path[length:]
        if not path:
            return {"device_paths": nodes}


_DETAIL_PARSERS: Final[Mapping[int, Callable[[bytes], dict[str, Any]]]] = {
    0x1: _simple,
    0x4: _blank,
    0x5: _simple,
    0x6: _event_tag,
    0xA: _platform_config_flags,
    0xC: _simple,
    0xD: _ipl,
    0x12: _simple,
    0x80000001: _efi_variable,
    0x80000002: _efi_variable,
    0x80000003: _boot_services_application,
    0x80000007: _simple,
    0x8000000A: _simple_string,
    0x8000000B: _simple_string,
    0x8000000C: _efi_variable,
    0x800000E0: _efi_variable,
}
