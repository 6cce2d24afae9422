# SPDX-License-Identifier: Apache-2.0
"""ASGI entry point for uvicorn workers: settings from ``$KBS_CONFIG_FILE`` (see ``kbs serve``)."""

from kbs.cli import app_from_environment

app = app_from_environment()
