"""One live page's socket as the hub sees it: its subscription, a bounded queue, and its own writer task.

The writer is the only thing that waits for the page's socket, so a page that reads slowly waits alone;
the hub only ever appends to the queue, and drops the page once it is `limit` frames behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from web.live.wire import ws_text_frame

Send = Callable[[str], Awaitable[None]]
Close = Callable[[int, str], Awaitable[None]]
# Writes a ready frame to the page's connection now: True, or False when it cannot take more now (the
# server's own backpressure); OSError when it is gone.
Direct = Callable[[bytes], bool]


class OutFrame:
    """A frame for many pages: its text (for the ASGI send) and its bytes on the wire, made once when a page
    is written directly (`Direct`)."""

    __slots__ = ("_wire", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._wire: bytes | None = None

    @property
    def wire(self) -> bytes:
        if self._wire is None:
            self._wire = ws_text_frame(self.text)
        return self._wire


class Backlog:
    """How many pages are still writing the newest frame: the hub makes the next one once few are, so that
    under load frames grow instead of piling up (fewer sends per trade: the cost that grows with the
    pages). Pages that were behind before the newest frame do not count: a slow page holds nobody up."""

    def __init__(self) -> None:
        self.generation = 0   # frames made so far
        self.writing = 0      # pages that went busy with the newest frame and are not done
        self.threshold = 1
        self.low = asyncio.Event()

    def next_frame(self) -> None:
        self.generation += 1
        self.writing = 0

    def started(self) -> int:
        self.writing += 1
        return self.generation

    def finished(self, generation: int) -> None:
        if generation == self.generation:
            self.writing -= 1
            if self.writing <= self.threshold:
                self.low.set()


class Page:
    """One browser socket: its subscription, a bounded queue of frames and the task that writes them.

    With a `Direct` writer (uvicorn, as the Procfile runs it) a page that has nothing queued is written at
    once, without waking its task or going through the ASGI send; a page that cannot take the frame now
    gets it queued, and its task sends it when the socket drains, in order."""

    def __init__(self, symbol: str | None, compact: bool, send: Send, close: Close, *, limit: int,
                 backlog: Backlog | None = None, address: str | None = None) -> None:
        self.symbol = symbol
        self.compact = compact
        self.address = address  # the client's, as the web server saw it (the per-address cap counts them)
        self._send = send
        self._close = close
        self._limit = limit
        self._backlog = backlog or Backlog()
        self._busy = False  # frames queued or being written
        self._generation = 0  # the backlog's frame when the page went busy
        self._queue: list[OutFrame] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._direct: Direct | None = None
        self.direct_writes = 0

    def start(self, on_failure: Callable[[Page, BaseException], None], direct: Direct | None = None) -> None:
        """Start the writer (once the socket is accepted: nothing is written before)."""
        self._direct = direct
        self._writer = asyncio.create_task(self._write_forever(), name=f"live page {self.symbol or '*'}")
        self._writer.add_done_callback(lambda task: self._ended(task, on_failure))

    def _ended(self, task: asyncio.Task[None], on_failure: Callable[[Page, BaseException], None]) -> None:
        if not task.cancelled() and (error := task.exception()) is not None:
            on_failure(self, error)

    def offer(self, frame: OutFrame) -> bool:
        """Write or queue a frame; False when the page is already `limit` frames behind (too slow)."""
        if self._direct is not None and not self._busy:
            try:
                if self._direct(frame.wire):
                    self.direct_writes += 1
                    return True
            except OSError:
                return True  # gone: its disconnect removes the page
        if len(self._queue) >= self._limit:
            return False
        self._queue.append(frame)
        if not self._busy:
            self._busy = True
            self._generation = self._backlog.started()
        self._wake.set()
        return True

    async def stop(self) -> None:
        """End the writer (a send waiting for a full socket is abandoned: nothing was written yet)."""
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        self._idle()

    def _idle(self) -> None:
        if self._busy:
            self._busy = False
            self._backlog.finished(self._generation)

    async def close(self, code: int, reason: str) -> None:
        await self.stop()
        await self._close(code, reason)

    async def _write_forever(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                frames, self._queue = self._queue, []
                for frame in frames:
                    await self._send(frame.text)
                if not self._queue:
                    self._idle()
        except OSError:
            return  # the socket is gone (the server's ClientDisconnected): its disconnect removes the page
