# SPDX-License-Identifier: Apache-2.0
"""PCCS requests are bounded as a whole: silent and dripping servers are given up on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from attestation.errors import CollateralUnavailableError
from attestation.tdx.base import CollateralKey
from attestation.tdx.collateral import PccsFetcher

KEY = CollateralKey("00A06D080000", "platform")
#: Read and write timeouts of the fetcher under test.
STEP_S = 0.3
#: Connecting to loopback is instant unless the machine stalls, as a loaded CI machine
#: did once for more than 0.3 s (ConnectTimeout instead of the ReadTimeout under test).
#: The whole request gets CONNECT_S + 2 x STEP_S.
CONNECT_S = 2.0
#: Far above the bound: only a hang reaches it.
HANG_S = 30.0


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # Accept, read the request, never answer.
    await reader.read(65536)
    try:
        await asyncio.sleep(HANG_S)
    finally:
        writer.close()


async def _drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # Answer at once, then one byte at a time, each well within the read timeout.
    await reader.read(65536)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
    try:
        for _ in range(100000):
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(STEP_S / 3)
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest.fixture(params=[(_silent, "ReadTimeout"), (_drip, "no complete answer in time")])
async def stalling_pccs(request) -> AsyncIterator[tuple[str, str]]:
    handler, reason = request.param
    tasks: list[asyncio.Task[None]] = []

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.append(task)
        await handler(reader, writer)

    server = await asyncio.start_server(tracked, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", reason
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def test_a_stalling_pccs_is_given_up_on(stalling_pccs: tuple[str, str]) -> None:
    url, reason = stalling_pccs
    async with httpx.AsyncClient() as http:
        fetcher = PccsFetcher(
            http, base_urls=[url], timeout=httpx.Timeout(STEP_S, connect=CONNECT_S)
        )
        async with asyncio.timeout(HANG_S):
            with pytest.raises(CollateralUnavailableError, match=reason):
                await fetcher.fetch(KEY)
