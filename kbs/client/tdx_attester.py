# SPDX-License-Identifier: Apache-2.0
"""Client-side TDX attester: a TD quote via Linux configfs-tsm, plus the CC event log.

Runs inside an Intel TDX guest. The quote comes from the kernel's TSM report interface
(``/sys/kernel/config/tsm/report``): make a report entry, write the 64-byte REPORT_DATA
to ``inblob``, read the quote from ``outblob``, and check ``generation`` to detect another
writer racing us on the same entry. The CC event log is the ACPI CCEL table
(``/sys/firmware/acpi/tables/data/CCEL``), trimmed after its last event, optionally
followed by the attestation agent's event log, and terminated like the guest-components
attester does. The evidence is what Trustee's ``tdx`` verifier expects::

    {"quote": "<standard base64>", "cc_eventlog": "<standard base64>" | null}

This module is part of the client and imports nothing from the server.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import tempfile
from pathlib import Path
from typing import Any, Final

_logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_AAEL_PATH",
    "DEFAULT_CCEL_PATH",
    "DEFAULT_TSM_REPORT_ROOT",
    "REPORT_DATA_SIZE",
    "TdxAttester",
    "TdxAttesterError",
]

DEFAULT_TSM_REPORT_ROOT: Final = Path("/sys/kernel/config/tsm/report")
DEFAULT_CCEL_PATH: Final = Path("/sys/firmware/acpi/tables/data/CCEL")
#: Where the attestation agent keeps its own (TCG2) event log (guest-components' default).
DEFAULT_AAEL_PATH: Final = Path("/run/attestation-agent/eventlog")
DEFAULT_TDX_GUEST_DEVICE: Final = Path("/dev/tdx_guest")
REPORT_DATA_SIZE: Final = 64
TDX_PROVIDER: Final = "tdx_guest"
#: A quote is about 5 KiB; the CCEL table is at most a few MiB.
MAX_QUOTE_BYTES: Final = 64 * 1024
MAX_EVENTLOG_BYTES: Final = 4 * 1024 * 1024
_END_OF_LOG: Final = b"\xff" * 8
_DIGEST_SIZES: Final = {0x0B: 32, 0x0C: 48, 0x0D: 64, 0x12: 32}


class TdxAttesterError(RuntimeError):
    """The TD quote or event log could not be obtained."""


def _new_report_dir(root: Path) -> Path:
    # configfs creates the entry's attribute files (provider, inblob, outblob, ...).
    return Path(tempfile.mkdtemp(prefix="kbs-", dir=root))


def _remove_report_dir(entry: Path) -> None:
    entry.rmdir()


def _read_limited(path: Path, limit: int) -> bytes:
    with path.open("rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise TdxAttesterError(f"{path.name} is larger than {limit} bytes")
    return data


def _read_generation(entry: Path) -> int:
    text = (entry / "generation").read_text().strip()
    try:
        return int(text)
    except ValueError:
        raise TdxAttesterError("tsm report generation is not a number") from None


def trim_ccel(table: bytes) -> bytes:
    """Cut a CCEL table after its last event (the ACPI table is padded with 0xFF).

    Returns the table unchanged if it cannot be walked (the verifier copes with padding).
    """
    try:
        pos = 32 + int.from_bytes(table[28:32], "little")  # after the spec id header event
        while pos + 8 <= len(table):
            head = table[pos : pos + 8]
            if head in (_END_OF_LOG, bytes(8)):
                return table[:pos]
            count = int.from_bytes(table[pos + 8 : pos + 12], "little")
            pos += 12
            for _ in range(count):
                pos += 2 + _DIGEST_SIZES[int.from_bytes(table[pos : pos + 2], "little")]
            pos += 4 + int.from_bytes(table[pos : pos + 4], "little")
        if pos == len(table):
            return table
    except KeyError:
        pass
    _logger.warning("ccel could not be trimmed; sending it as read")
    return table


class TdxAttester:
    """Produces ``tdx`` evidence inside an Intel TDX guest."""

    tee = "tdx"

    def __init__(
        self,
        *,
        configfs_root: Path = DEFAULT_TSM_REPORT_ROOT,
        ccel_path: Path = DEFAULT_CCEL_PATH,
        aael_path: Path | None = None,
    ) -> None:
        """Create the attester.

        Args:
            configfs_root: the configfs-tsm report directory.
            ccel_path: the ACPI CCEL table.
            aael_path: an attestation-agent event log (TCG2 ``EV_EVENT_TAG`` events) to
                append after the CCEL, or ``None``.
        """
        self._root = configfs_root
        self._ccel_path = ccel_path
        self._aael_path = aael_path

    @classmethod
    def detect(
        cls,
        *,
        configfs_root: Path = DEFAULT_TSM_REPORT_ROOT,
        tdx_guest_device: Path = DEFAULT_TDX_GUEST_DEVICE,
    ) -> bool:
        """Whether this is a TD: configfs-tsm with the ``tdx_guest`` provider, or the device."""
        if configfs_root.is_dir():
            try:
                entry = _new_report_dir(configfs_root)
                try:
                    if (entry / "provider").read_text().strip() == TDX_PROVIDER:
                        return True
                finally:
                    _remove_report_dir(entry)
            except OSError:
                _logger.debug("configfs-tsm probe failed", exc_info=True)
        return tdx_guest_device.exists()

    async def evidence(self, report_data: bytes) -> dict[str, Any]:
        """Return ``{"quote": b64, "cc_eventlog": b64 | None}`` binding ``report_data``.

        Args:
            report_data: at most 64 bytes (zero-padded to 64), normally the SHA-384 of the
                canonical runtime data.

        Raises:
            TdxAttesterError: no quote could be produced.
            ValueError: ``report_data`` is longer than 64 bytes.
        """
        if len(report_data) > REPORT_DATA_SIZE:
            raise ValueError(f"tdx report_data must be at most {REPORT_DATA_SIZE} bytes")
        padded = report_data.ljust(REPORT_DATA_SIZE, b"\x00")
        # Both are blocking file I/O (the quote takes a round trip to the host's QGS).
        quote = await asyncio.to_thread(self._quote, padded)
        eventlog = await asyncio.to_thread(self._eventlog)
        return {
            "quote": base64.b64encode(quote).decode("ascii"),
            "cc_eventlog": None if eventlog is None else base64.b64encode(eventlog).decode("ascii"),
        }

    def _quote(self, report_data: bytes) -> bytes:
        try:
            entry = _new_report_dir(self._root)
        except OSError as exc:
            raise TdxAttesterError("cannot create a configfs-tsm report entry") from exc
        try:
            # 1. The entry must be backed by the TDX provider.
            provider = (entry / "provider").read_text().strip()
            if provider != TDX_PROVIDER:
                raise TdxAttesterError(f"configfs-tsm provider is {provider!r}, not tdx_guest")
            # 2. Write REPORT_DATA, read the quote; generation must have moved by exactly
            #    our one write, or someone else wrote to this entry meanwhile.
            before = _read_generation(entry)
            (entry / "inblob").write_bytes(report_data)
            quote = _read_limited(entry / "outblob", MAX_QUOTE_BYTES)
            after = _read_generation(entry)
            if after != before + 1:
                raise TdxAttesterError(
                    f"configfs-tsm report raced (generation {before} -> {after})"
                )
        except OSError as exc:
            raise TdxAttesterError(f"configfs-tsm report failed: {exc.strerror or exc}") from exc
        finally:
            try:
                _remove_report_dir(entry)
            except OSError:
                _logger.warning("could not remove configfs-tsm entry %s", entry, exc_info=True)
        if not quote:
            raise TdxAttesterError("configfs-tsm returned an empty quote")
        return quote

    def _eventlog(self) -> bytes | None:
        log = b""
        try:
            if self._ccel_path.exists():
                log = trim_ccel(_read_limited(self._ccel_path, MAX_EVENTLOG_BYTES))
            if self._aael_path is not None and self._aael_path.exists():
                if not log:
                    raise TdxAttesterError("an aael without a ccel is not supported")
                log += _read_limited(self._aael_path, MAX_EVENTLOG_BYTES)
        except OSError as exc:
            raise TdxAttesterError(f"cannot read the event log: {exc.strerror or exc}") from exc
        if not log:
            return None
        return log + _END_OF_LOG if not log.endswith(_END_OF_LOG) else log
