# SPDX-License-Identifier: Apache-2.0
"""TDX verification in worker processes: the event loop stays free, a dead worker is replaced.

The server is ``create_app`` with the TDX verifier built from settings (test root, fake
PCCS); the guests are :class:`PkiAttester`. ``support.verify_hooks`` holds a verification
inside ``check_evidence`` until the test releases it, so the tests assert what happens
*while* a verification runs (ordering, never a wall-clock threshold).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import attestation.tdx.verifier as verifier_module
import kbs.tdx
from attestation.tdx.pool import VerificationPool
from kbs.client.api import KbsClientError
from kbs.settings import ConfigError
from support.fake_pccs import FakePccs
from support.kbs_app import AdminKey, RunningKbs, now_clock, running_kbs
from support.tdx_guest import (
    INIT_DATA_DIGEST,
    INIT_DATA_TOML,
    PkiAttester,
    ccel,
    tdx_reference_values,
    tdx_settings,
)
from support.tdx_pki import TestPki
from support.verify_hooks import VERIFY_PROCESSES_ENV, held_check_evidence, install_hold

ERR = "https://github.com/confidential-containers/kbs/errors/"
#: Bound on every wait for a file the hook writes (a failure, not a timing target).
WAIT_S = 60.0


@pytest.fixture(autouse=True)
def _settings_decide(monkeypatch: pytest.MonkeyPatch) -> None:
    # The suite verifies inline through the environment (which beats the settings we
    # pass here); these tests set verify_processes themselves.
    monkeypatch.delenv(VERIFY_PROCESSES_ENV)


@pytest.fixture
def pccs() -> Iterator[FakePccs]:
    with FakePccs({}) as server:
        yield server


@pytest.fixture
def pki(pccs: FakePccs) -> TestPki:
    pki = TestPki.create(root_cdp=pccs.cdp_url)
    parts = pki.collateral_parts(now_clock().now())
    pccs.parts = {parts.fmspc: parts}
    return pki


@pytest.fixture
def guest(pki: TestPki, shared_dir: Path) -> PkiAttester:
    raw, rtmrs = ccel(shared_dir)
    return PkiAttester(
        pki, eventlog=raw, rtmrs=rtmrs, mr_config_id=INIT_DATA_DIGEST.ljust(48, b"\x00")
    )


@dataclass
class World:
    """A test PKI, its fake PCCS, a guest, an admin key, and the hook's directory."""

    tmp_path: Path
    admin_key: AdminKey
    pki: TestPki
    pccs: FakePccs
    guest: PkiAttester
    hold: Path


@pytest.fixture
def world(tmp_path: Path, admin_key: AdminKey, pki: TestPki, pccs: FakePccs, guest) -> World:
    hold = tmp_path / "hold"
    hold.mkdir()
    return World(tmp_path, admin_key, pki, pccs, guest, hold)


@contextlib.asynccontextmanager
async def _kbs(world: World, *, verify_processes: int) -> AsyncIterator[RunningKbs]:
    settings = tdx_settings(
        world.tmp_path,
        world.admin_key,
        world.pki,
        [world.pccs.url],
        dcap={"verify_processes": verify_processes},
    )
    async with running_kbs(settings, admin_key=world.admin_key) as running:
        await running.admin().set_reference_values(tdx_reference_values(world.guest.rtmrs))
        yield running


async def _attest(kbs: RunningKbs, guest: PkiAttester) -> str:
    async with kbs.guest(attester=guest, init_data=INIT_DATA_TOML) as client:
        token: str = await client.attest()
        return token


async def _wait_for(path: Path) -> None:
    for _ in range(int(WAIT_S / 0.01)):
        if path.exists():  # noqa: ASYNC240 - polling a local file the hook writes
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"{path.name} never appeared")


def _hold_in_workers(monkeypatch: pytest.MonkeyPatch, hold: Path) -> None:
    """Every pool the app builds installs the hold hook in its worker processes."""
    monkeypatch.setattr(
        kbs.tdx,
        "VerificationPool",
        functools.partial(VerificationPool, initializer=install_hold, initargs=(str(hold),)),
    )


async def test_healthz_answers_while_verifications_run_in_the_pool(
    world: World, monkeypatch
) -> None:
    guest, hold = world.guest, world.hold
    _hold_in_workers(monkeypatch, hold)
    async with _kbs(world, verify_processes=1) as running:
        attestations = [asyncio.create_task(_attest(running, guest)) for _ in range(4)]
        await _wait_for(hold / "started")
        # A verification is under way in the worker (and three more are queued): the
        # server's event loop still answers another request at once.
        health = await running.http.get("/healthz")
        assert health.status_code == 200
        assert not (hold / "finished").exists()
        assert not any(task.done() for task in attestations)
        (hold / "release").touch()
        tokens = await asyncio.gather(*attestations)
        assert all(tokens)


async def test_inline_verification_holds_the_event_loop(world: World, monkeypatch) -> None:
    guest, hold = world.guest, world.hold
    # The contrast that shows the test above can fail: with verify_processes = 0 the
    # same held verification runs on the loop, and nothing else runs until it ends.
    monkeypatch.setattr(verifier_module, "check_evidence", held_check_evidence(hold, timeout_s=0.5))
    async with _kbs(world, verify_processes=0) as running:
        assert running.app.state.kbs.tdx.pool is None
        attestation = asyncio.create_task(_attest(running, guest))
        await _wait_for(hold / "started")
        # The first time this coroutine could run after the verification began, it had
        # already finished: the loop was held the whole time.
        assert (hold / "finished").exists()
        assert (await running.http.get("/healthz")).status_code == 200
        assert await attestation


async def test_a_killed_worker_fails_its_attestation_closed_and_is_replaced(
    world: World, monkeypatch
) -> None:
    guest, hold = world.guest, world.hold
    _hold_in_workers(monkeypatch, hold)
    async with _kbs(world, verify_processes=1) as running:
        pool = running.app.state.kbs.tdx.pool
        assert isinstance(pool, VerificationPool)
        attestation = asyncio.create_task(_attest(running, guest))
        await _wait_for(hold / "started")
        victim = int((hold / "started").read_text())
        assert pool.pids() == [victim]
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(KbsClientError) as info:
            await attestation
        assert info.value.status == 503
        assert info.value.error_type == ERR + "VerifierUnavailable"
        assert "tdx verification worker failed" in str(info.value)
        # The next attestation gets a new worker (still hooked: let it through at once).
        (hold / "release").touch()
        assert await _attest(running, guest)
        assert pool.restarts == 1
        assert pool.pids() != [victim]
        assert (await running.http.get("/healthz")).status_code == 200


async def test_the_pool_stops_with_the_app(world: World) -> None:
    guest = world.guest
    async with _kbs(world, verify_processes=2) as running:
        pool = running.app.state.kbs.tdx.pool
        pids = pool.pids()
        assert len(pids) == 2  # warmed up at start-up, before the first quote
        assert await _attest(running, guest)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(os.getpid)


@pytest.mark.parametrize("value", [-1, 65])
def test_verify_processes_out_of_range_is_refused(tmp_path, pki, value: Any) -> None:
    with pytest.raises(ConfigError, match="verify_processes"):
        tdx_settings(tmp_path, None, pki, ["http://127.0.0.1:1"], dcap={"verify_processes": value})
