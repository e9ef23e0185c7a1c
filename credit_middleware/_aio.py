"""``bounded(op, seconds)``: await with a deadline, without an extra task where possible;
``retrieve(task)``: a done-callback for a task nobody awaits.

``asyncio.wait_for`` on Python 3.11 wraps the coroutine in a new task; ``asyncio.timeout``
runs it in the current one, which matters on a path taken by every request.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")

if sys.version_info >= (3, 11):

    async def bounded(op: Awaitable[T], seconds: float) -> T:
        """Await ``op``; raise ``TimeoutError`` after ``seconds``."""
        async with asyncio.timeout(seconds):
            return await op

else:  # pragma: no cover - Python 3.10

    async def bounded(op: Awaitable[T], seconds: float) -> T:
        """Await ``op``; raise ``asyncio.TimeoutError`` after ``seconds``."""
        return await asyncio.wait_for(op, seconds)


def retrieve(task: asyncio.Future[Any]) -> None:
    """Read an abandoned task's outcome, so an expected error is not logged as lost."""
    if not task.cancelled():
        task.exception()
