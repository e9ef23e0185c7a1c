"""``python -m credit_middleware``: the operator's CLI."""

from __future__ import annotations

import sys

from .ops.cli import main

sys.exit(main())
