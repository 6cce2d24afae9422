# SPDX-License-Identifier: Apache-2.0
"""HTTP routes of the KBS (the only modules that raise HTTP-framework errors)."""

__all__: list[str] = []
