"""Waiting for something unless a stop event comes first (the one helper for it)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Final, TypeVar

T = TypeVar("T")


class Stopped:
    """The result of `unless_stopped` when the stop event won."""

    def __repr__(self) -> str:
        return "STOPPED"


STOPPED: Final = Stopped()


async def unless_stopped(awaitable: Awaitable[T], stop: asyncio.Event) -> T | Stopped:
    """The awaitable's result, or STOPPED if `stop` is set first (the awaitable is then cancelled)."""
    task = asyncio.ensure_future(awaitable)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return STOPPED
