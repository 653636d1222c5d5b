"""Helpers for the fake exchange's tests: waiting on conditions and reading frames, with deadlines."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection


async def wait_until(condition: Callable[[], Any], timeout: float = 2.0) -> None:
    """Poll `condition` until it is true, or fail after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


async def recv_json(ws: ClientConnection, timeout: float = 2.0) -> Any:
    async with asyncio.timeout(timeout):
        return orjson.loads(await ws.recv())


async def recv_reply(ws: ClientConnection, timeout: float = 2.0) -> Any:
    """The next message that carries an `id` (a reply), skipping stream events."""
    async with asyncio.timeout(timeout):
        while True:
            message = orjson.loads(await ws.recv())
            if isinstance(message, dict) and "id" in message:
                return message
