# SPDX-License-Identifier: Apache-2.0
"""Python client for the KBS protocol and admin API (what ``kbs-client`` drives)."""

__all__: list[str] = []
