"""What the suite's uvicorn workers import: ``examples.app:app`` unchanged, plus two things
for the faults, so that the example app itself carries no test hook:

- LiteLLM is imported before the worker serves (the chat route imports it on its first call,
  which blocks the worker's loop for many seconds: an unplanned stall in the middle of the
  run, and after every worker restart), with its bundled cost map (no network fetch);
- SIGUSR1 blocks this worker's event loop with ``time.sleep`` for ``CREDIT_CHAOS_STALL``
  seconds (the planned stall), only when ``CREDIT_CHAOS=1``.
"""

from __future__ import annotations

import os
import signal
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm  # noqa: F401  (preloaded, see above)

from examples.app import app

__all__ = ["app"]

if os.environ.get("CREDIT_CHAOS") == "1":
    _stall = float(os.environ.get("CREDIT_CHAOS_STALL", "6"))
    signal.signal(signal.SIGUSR1, lambda *_: time.sleep(_stall))
