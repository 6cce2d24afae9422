# SPDX-License-Identifier: Apache-2.0
"""kbs.tdx: the insecure trust anchor file must be exactly one self-signed CA."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization

from kbs.tdx import load_root_ca_der
from support.tdx_pki import TestPki


@pytest.fixture(scope="module")
def pki() -> TestPki:
    return TestPki.create()


def test_root_ca_as_der_or_pem(pki: TestPki) -> None:
    assert load_root_ca_der(pki.root_der) == pki.root_der
    pem = pki.root.public_bytes(serialization.Encoding.PEM)
    assert load_root_ca_der(b"\n" + pem) == pki.root_der


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda pki: pki.pck_leaf.public_bytes(serialization.Encoding.DER),
            "basic constraints|self-signed",
        ),
        (lambda pki: pki.pck_ca.public_bytes(serialization.Encoding.DER), "not a self-signed ca"),
        (
            lambda pki: pki.root.public_bytes(serialization.Encoding.PEM) * 2,
            "exactly one certificate",
        ),
        (lambda _pki: b"\x00" * (65 * 1024), "too large"),
    ],
)
def test_root_ca_must_be_one_self_signed_ca(pki: TestPki, make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_root_ca_der(make(pki))


def test_garbage_is_refused() -> None:
    with pytest.raises(ValueError):
        load_root_ca_der(b"not a certificate")
