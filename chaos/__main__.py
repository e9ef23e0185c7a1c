"""``python -m chaos``: run the fault suite (see ``chaos.run``)."""

from __future__ import annotations

from .run import main

raise SystemExit(main())
