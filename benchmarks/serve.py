"""One server process: ``python -m benchmarks.serve PORT`` with ``CREDIT_BENCH_*`` in the env.

uvicorn, one worker, no access log, on 127.0.0.1 only.
"""

from __future__ import annotations

import logging
import sys

import uvicorn

from .apps import build
from .common import BenchEnv


def main() -> None:
    port = int(sys.argv[1])
    logging.basicConfig(level=logging.WARNING)
    app = build(BenchEnv.from_env())
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        workers=1,
        log_level="warning",
        access_log=False,
        lifespan="on",
    )


if __name__ == "__main__":
    main()
