# SPDX-License-Identifier: Apache-2.0
"""Pieces of the built-in attestation service that stand alone."""

from __future__ import annotations

from kbs.appraisal import flatten_claims


def test_flatten_claims_as_the_reference_writes_tcb_status():
    claims = {
        "quote": {"body": {"mr_td": "aa", "rtmr_0": "bb"}, "header": {"version": "0400"}},
        "uefi_event_logs": [{"index": 1}],
        "tcb_status": "UpToDate",
        "report_data": "00ff",
        "init_data": "11",
        "empty": {},
    }
    assert flatten_claims("tdx", claims) == {
        "tdx.quote.body.mr_td": "aa",
        "tdx.quote.body.rtmr_0": "bb",
        "tdx.quote.header.version": "0400",
        "tdx.uefi_event_logs": [{"index": 1}],
        "tdx.tcb_status": "UpToDate",
        "report_data": "00ff",
        "init_data": "11",
    }


def test_flatten_claims_without_bindings_gives_empty_strings():
    assert flatten_claims("sample", {"svn": "1"}) == {
        "sample.svn": "1",
        "report_data": "",
        "init_data": "",
    }
