# SPDX-License-Identifier: Apache-2.0
"""Shared test fakes: test PKIs, loopback servers, emulators (importable as ``support``)."""
