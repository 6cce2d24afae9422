# SPDX-License-Identifier: Apache-2.0
"""Key Broker Service: the RCAR protocol, sessions, tokens, admin API, server and client."""

__all__ = ["__version__"]

__version__ = "0.1.0"
