# SPDX-License-Identifier: Apache-2.0
"""TDX verification throughput: our verifier (warm cache) vs bare dcap-qvl, same quote, same run.

Usage: .venv/bin/python bench/tdx_verify.py [--rounds 5] [--iterations 400]

Uses a real Intel-signed quote from ../shared/testdata/tdx at its verify time, Intel's
pinned root, and a CachingCollateralSource warmed from its store (a PCCS request would
raise). Prints plain lines: per-call cost of each step, verifications per second of each
path (best round), and the ratio ours / bare (goal >= 0.9).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import statistics
import time
from pathlib import Path

import dcap_qvl

from attestation.base import NOT_PROVIDED
from attestation.errors import CollateralUnavailableError
from attestation.tdx.base import Collateral, CollateralKey, StoredCollateral
from attestation.tdx.collateral import CachingCollateralSource, MemoryCollateralStore
from attestation.tdx.dcap import PlatformPolicy, intel_root_ca_der, verify_quote
from attestation.tdx.eventlog import parse_event_log
from attestation.tdx.pck import parse_pck_chain
from attestation.tdx.quote import parse_quote, quote_claims
from attestation.tdx.verifier import TdxVerifier

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


class NoFetcher:
    """A PCCS that must not be called on the warm path."""

    async def fetch(self, key):
        raise CollateralUnavailableError(f"unexpected pccs request for {key}")


def per_call(fn, iterations: int) -> float:
    start = time.perf_counter()
    for _ in range(iterations):
        fn()
    return (time.perf_counter() - start) / iterations


async def per_call_async(fn, iterations: int) -> float:
    start = time.perf_counter()
    for _ in range(iterations):
        await fn()
    return (time.perf_counter() - start) / iterations


async def main() -> None:  # noqa: PLR0915 (a linear script)
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--quote", default="q1_dcapqvl_tdx_quote_v4.bin")
    args = parser.parse_args()

    cases = json.loads((SHARED / "testdata/tdx/expected.json").read_text())
    case = next(c for c in cases if c["quote"] == args.quote and c["result"] == "ok")
    raw = (SHARED / "testdata/tdx" / case["quote"]).read_bytes()
    collateral_json = (SHARED / "testdata/tdx" / case["collateral"]).read_text()
    at = dt.datetime.fromtimestamp(case["verify_at"], dt.UTC)
    now = case["verify_at"]
    root = intel_root_ca_der()

    collateral = Collateral.from_qvl_json(collateral_json)
    qvl_collateral = dcap_qvl.QuoteCollateralV3.from_json(collateral_json)
    store = MemoryCollateralStore()
    key = CollateralKey(collateral.key.fmspc, collateral.key.ca)
    await store.save(
        key, StoredCollateral(collateral.qvl_json, at, collateral.next_update, "bench://store")
    )
    source = CachingCollateralSource(NoFetcher(), store=store, root_ca_der=root)
    verifier = TdxVerifier(collateral=source, root_ca_der=root)
    evidence = {"quote": base64.b64encode(raw).decode(), "cc_eventlog": None}
    report_data = bytes.fromhex(case["measurements"]["report_data"])

    async def ours():
        return await verifier.verify(
            evidence, report_data=report_data, init_data_hash=NOT_PROVIDED, at=at
        )

    def bare_root_ca():
        return dcap_qvl.verify_with_root_ca(raw, qvl_collateral, root, now)

    def bare_verify():
        return dcap_qvl.verify(raw, qvl_collateral, now)

    result = await ours()  # warms the store -> memory, PCK chain and claims memos
    assert result.claims["tcb_status"] == case["status_or_error"], result.claims["tcb_status"]
    n = args.iterations

    # Per-step costs (the steps the verifier runs, called one by one).
    quote = parse_quote(raw)
    pck = parse_pck_chain(quote.signature_data.pck_chain_pem)
    ccel = (SHARED / "testdata/trustee/eventlog-CCEL_AAEL_alibabacloud").read_bytes()
    steps = {
        "1 evidence base64 decode": lambda: base64.b64decode(evidence["quote"], validate=True),
        "2 parse_quote": lambda: parse_quote(raw),
        "3a parse_pck_chain (uncached; cached by chain digest in the verifier)": lambda: (
            parse_pck_chain(quote.signature_data.pck_chain_pem)
        ),
        "4 verify_quote (dcap-qvl, memoised claims)": lambda: verify_quote(
            raw,
            collateral,
            root_ca_der=root,
            at=at,
            platform_policy=PlatformPolicy(),
            quote=quote,
            pck=pck,
        ),
        "7 parse_event_log (Alibaba CCEL+AAEL, 87 events) + replay x4": lambda: [
            parse_event_log(ccel).replay(i) for i in range(1, 5)
        ],
        "8 quote_claims": lambda: quote_claims(quote),
        "   Collateral.from_qvl_json (once per store load)": lambda: Collateral.from_qvl_json(
            collateral_json
        ),
        "   QuoteCollateralV3.from_json (once per collateral)": lambda: (
            dcap_qvl.QuoteCollateralV3.from_json(collateral_json)
        ),
    }
    for name, fn in steps.items():
        fn()
        print(f"step {name}: {per_call(fn, max(50, n // 4)) * 1e6:.1f} us")
    warm = await per_call_async(lambda: source.get_collateral(key.fmspc, key.ca, at=at), n)
    print(f"step 3b collateral (warm cache): {warm * 1e6:.1f} us")

    # Throughput: interleave single calls of the three paths (this machine's speed drifts),
    # sum per path within a round, keep each path's best round.
    times: dict[str, list[float]] = {"ours": [], "verify_with_root_ca": [], "verify": []}
    clock = time.perf_counter
    for _ in range(args.rounds):
        total = dict.fromkeys(times, 0.0)
        for _ in range(n):
            t0 = clock()
            await ours()
            t1 = clock()
            bare_root_ca()
            t2 = clock()
            bare_verify()
            t3 = clock()
            total["ours"] += t1 - t0
            total["verify_with_root_ca"] += t2 - t1
            total["verify"] += t3 - t2
        for name, value in total.items():
            times[name].append(value / n)
    for name, values in times.items():
        best_ms, median_ms = min(values) * 1e3, statistics.median(values) * 1e3
        print(
            f"{name}: {1 / min(values):.0f} verifications/s "
            f"(best {best_ms:.3f} ms, median {median_ms:.3f} ms per call)"
        )
    best = {name: min(values) for name, values in times.items()}
    ratios = [b / o for b, o in zip(times["verify_with_root_ca"], times["ours"], strict=True)]
    ratio = best["verify_with_root_ca"] / best["ours"]
    print(f"ratio ours/verify_with_root_ca (best rounds): {ratio:.3f}")
    print(f"ratio ours/verify (best rounds): {best['verify'] / best['ours']:.3f}")
    print(f"ratio ours/verify_with_root_ca per round: {' '.join(f'{r:.3f}' for r in ratios)}")
    print(f"quote {case['quote']} at {case['verify_at_iso']}: {result.claims['tcb_status']}")


if __name__ == "__main__":
    asyncio.run(main())
