# SPDX-License-Identifier: Apache-2.0
"""``python -m kbs.client``: the same as the ``kbs-client`` console script."""

import sys

from kbs.client.cli import main

sys.exit(main())
