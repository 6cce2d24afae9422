# SPDX-License-Identifier: Apache-2.0
"""``python -m kbs``: the same as the ``kbs`` console script."""

import sys

from kbs.cli import main

sys.exit(main())
