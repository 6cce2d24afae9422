# SPDX-License-Identifier: Apache-2.0
"""The ``kbs`` console script."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    """Run the ``kbs`` command line."""
    parser = argparse.ArgumentParser(prog="kbs")
    parser.parse_args(argv)
    return 0
