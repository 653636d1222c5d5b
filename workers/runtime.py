"""The streams worker's runtime: one event loop per process hosts every stream task of the process.

Celery still runs one long-running task per symbol stream — its own lease, stop flag, status and task
events: the unit an operator sees and stops — but the task's thread only hands its stream to this
runtime and waits (`Runtime.run_stream`). The runtime owns what the streams share, as one generation at a
time (workers.generation): one StreamClient whose streams share combined connections, one runner pumping
every stream's trades into the Redis hand-off buffer (workers.handoff: one script per batch, the resume
point of each stream moving with its trades), one heartbeat for all streams (workers.heartbeat: lease
renewals in one script, stop flags in one read, statuses and counters in one pipeline, built by
workers.reporting), one broadcaster. Batching per process, not per trade: a thousand streams cost a
handful of Redis round trips a beat, not thousands.

What every stream can rely on: everything runs supervised (an unexpected error ends every stream of the
generation, logged once, and the supervisor restarts them); the leases are fenced (workers.fence: no
renewal confirmed within 3/4 of the TTL, and every connection is dropped before a lease can expire);
stops are bounded (STOP_GRACE for the connections, FINAL_HANDOVER for what was read, FINAL_REDIS for each
last Redis call), and a stopped stream's held batch is handed on before its newest trades, so that its
resume point never passes a hole.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis.asyncio
from django.conf import settings

from streams.binance.logcontext import stream_context
from streams.binance.protocol import Trade
from streams.binance.streamid import StreamId, by_stream
from streams.failures import describe, is_transient
from workers.budget import take_connection_slot
from workers.fence import FENCE_AT
from workers.generation import STOP_GRACE, Generation, new_generation
from workers.handoff import FINAL_HANDOVER, settled
from workers.heartbeat import Heartbeat
from workers.hosting import Outcome, StreamHandle, resume_point
from workers.keys import starting_key
from workers.leases import Lease, release_leases
from workers.process_errors import ErrorRecorder
from workers.redis import async_redis
from workers.reporting import FINAL_REDIS, Reporter
from workers.shutdown import ShutdownSignal
from workers.status import StreamStatus

__all__ = ["FINAL_HANDOVER", "FINAL_REDIS", "STOP_GRACE", "Outcome", "Runtime", "ShutdownSignal", "runtime"]

logger = logging.getLogger(__name__)

HAND_OFF_TICK = 0.05   # s a hand-off batch gathers the trades of every stream (per process, not per trade)
REDIS_CONNECTIONS = 16  # the runtime's own; its work is pipelined (at most 50 Redis connections a process)


class Runtime:
    """One per streams-worker process (`runtime()`); tests may make their own."""

    def __init__(self, shutdown: ShutdownSignal | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.set_default_executor(ThreadPoolExecutor(max_workers=4, thread_name_prefix="stream-io"))
        self._thread = threading.Thread(target=self._loop.run_forever, name="stream-runtime", daemon=True)
        self._thread.start()
        self.handles: dict[StreamId, StreamHandle] = {}
        self.generation: Generation | None = None
        self._redis: redis.asyncio.Redis | None = None
        self._reporter: Reporter | None = None
        self._errors = ErrorRecorder()
        self._tasks: list[asyncio.Task[None]] = []
        self._finishing: set[asyncio.Task[None]] = set()  # stream ends and generation stops under way
        self._shutdown_signal = shutdown
        if shutdown is not None:
            shutdown.subscribe(self._signalled)

    # --- the Celery task's side (any thread) --------------------------------------------------------

    def _signalled(self) -> None:
        """The worker shuts down (called from the signalling thread)."""
        self._loop.call_soon_threadsafe(self._stop_all, "worker shutting down")

    def run_stream(self, sid: StreamId, *, owner: str,
                   publish: Callable[[StreamStatus], None] | None = None) -> Outcome:
        """Host stream `sid` until it ends (stop flag, lease lost, shutdown, failure)."""
        future = asyncio.run_coroutine_threadsafe(self._host(sid, owner, publish), self._loop)
        return future.result()

    def stop_all(self, reason: str) -> None:
        self._loop.call_soon_threadsafe(self._stop_all, reason)

    def close(self) -> None:
        """Stop every stream, then the loop (tests, benchmarks)."""
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    # --- hosting a stream ---------------------------------------------------------------------------

    async def _host(self, sid: StreamId, owner: str, publish: Callable[[StreamStatus], None] | None) -> Outcome:
        if self._shutdown_signal is not None and self._shutdown_signal.is_set():
            return Outcome("worker shutting down")
        with stream_context(sid):
            redis_client = self._redis_client()
            lease = Lease(redis_client, sid, owner, settings.COLLECTOR_LEASE_TTL)
            try:
                sent = time.monotonic()
                if not await asyncio.wait_for(lease.acquire(), settings.COLLECTOR_LEASE_TTL * FENCE_AT):
                    logger.info("another task holds the lease; nothing to do")
                    return Outcome("lease held by another task")
                await redis_client.delete(starting_key(sid))
                resume = await resume_point(redis_client, sid)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                logger.warning("cannot start: %s; the supervisor will start it again", describe(exc))
                return Outcome(f"cannot start: {describe(exc)}", failed=True)
            handle = StreamHandle(sid, owner, lease, publish)
            # The shared parts run outside any one stream's logging context (their lines name streams).
            first = not self.handles
            self.handles[sid] = handle
            generation = contextvars.Context().run(self._ensure_generation)
            if first:  # the fence runs from the oldest lease not renewed since: only the first one sets it
                generation.fence.confirmed(sent)
            contextvars.Context().run(generation.client.add, sid, resume)
            logger.info("started by %s, resuming after %s", owner, resume if resume is not None else "nothing stored")
            await self._reporter_of().report(handle, self.generation, "starting")
            await handle.done.wait()
            logger.info("stopped (%s) after handing %d trades to the buffer", handle.reason, handle.handed)
            status = self._reporter_of().status(handle, self.generation)
            return Outcome(handle.reason, handle.handed, status, failed=handle.failure is not None)

    def _redis_client(self) -> redis.asyncio.Redis:
        """One client for every stream of the process, at most REDIS_CONNECTIONS connections (they wait)."""
        if self._redis is None:
            self._redis = async_redis(max_connections=REDIS_CONNECTIONS)
            self._reporter = Reporter(self._redis, self._errors)
        return self._redis

    def _reporter_of(self) -> Reporter:
        self._redis_client()
        assert self._reporter is not None
        return self._reporter

    # --- the shared parts: one generation at a time -------------------------------------------------

    def _ensure_generation(self) -> Generation:
        """The current generation; a new one after a failure or a fence, its tasks supervised here."""
        if self.generation is not None:
            return self.generation
        redis_client = self._redis_client()
        generation = self.generation = new_generation(
            redis_client, self._errors, linger=HAND_OFF_TICK, on_handed=self._on_handed, on_fence=self._fenced,
            take_slot=self._take_slot)
        generation.broadcaster.start(self._spawn)
        generation.pump = self._spawn(self._pump(generation), "pump")
        heartbeat = Heartbeat(redis_client, generation, hosted=lambda: list(self.handles.values()),
                              detach=self._detach, reporter=self._reporter_of(), errors=self._errors,
                              interval=settings.COLLECTOR_HEARTBEAT_INTERVAL)
        self._spawn(heartbeat.run(), "heartbeat")
        return generation

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.append(task)
        task.add_done_callback(self._task_ended)
        return task

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        """The runtime's own tasks are supervised: an unexpected end fails every stream, loudly."""
        if task in self._tasks:
            self._tasks.remove(task)
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        assert error is not None
        logger.error("runtime task %s failed; every stream of this process ends: %s", task.get_name(),
                     describe(error), exc_info=error)
        self._end_generation(error)

    async def _pump(self, generation: Generation) -> None:
        try:
            await generation.runner.pump(generation.stop)
        except Exception as exc:  # the client failed (logged where it happened): every stream ends
            self._end_generation(exc)

    def _end_generation(self, error: BaseException) -> None:
        """The client failed or was fenced: every stream it carried ends (the supervisor restarts them)."""
        for handle in list(self.handles.values()):
            if handle.failure is None and not handle.stopping:
                handle.failure = error
        self._stop_all(f"failed: {describe(error)}")

    async def _take_slot(self) -> None:
        wait = await take_connection_slot(self._redis_client(), limit=settings.COLLECTOR_CONNECTION_BUDGET,
                                          window=settings.COLLECTOR_CONNECTION_WINDOW)
        if self.generation is not None:
            self.generation.connection_wait = wait

    def _on_handed(self, trades: list[Trade]) -> None:
        """The sink handed `trades` to the buffer: count them per stream, broadcast them."""
        now = time.monotonic()
        for sid, handed in by_stream(trades).items():
            handle = self.handles.get(sid)
            if handle is not None:
                handle.handed += len(handed)
                handle.handed_at = now
        if self.generation is not None:
            self.generation.broadcaster.offer(trades)

    # --- fencing, stops --------------------------------------------------------------------------------

    def _fenced(self) -> None:
        """No lease renewal was confirmed in time: drop every exchange connection now, before a lease can
        expire and another task take a stream (one owner per stream, whatever Redis does)."""
        if not self.handles or self.generation is None:
            return
        limit, ttl = self.generation.fence.limit, settings.COLLECTOR_LEASE_TTL
        self._errors.note("lease", TimeoutError(f"no renewal confirmed within {limit:.1f} s"))
        logger.error("the leases could not be confirmed within %.1f s of their %.0f s TTL; dropping every "
                     "connection of this process before another task can take a stream", limit, ttl)
        self.generation.client.abort("lease not confirmed (fenced)")
        self._stop_all("lease not confirmed (fenced)")

    def _detach(self, handle: StreamHandle, reason: str) -> None:
        """End one stream: unsubscribe it, keep what was read of it, release its lease, end its task."""
        if handle.stopping:
            return
        handle.stopping = True
        handle.reason = reason
        with stream_context(handle.sid):
            logger.info("stopping: %s", reason)
        generation = self.generation
        if generation is not None:
            generation.sink.keep(generation.client.take_stream(handle.sid))
            generation.client.remove(handle.sid)
        self._keep(self._finish(handle, generation), f"finish {handle.sid}")

    def _keep(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    async def _finish(self, handle: StreamHandle, generation: Generation | None) -> None:
        try:
            if generation is not None and generation.sink.pending_for(handle.sid):
                # In order: the older trades of the stream that the pump may hold go first, so that its resume
                # point never passes a trade not handed on yet.
                if await settled(generation.runner, FINAL_HANDOVER):
                    await generation.sink.close(FINAL_HANDOVER)
                else:
                    dropped = generation.sink.drop(handle.sid)
                    logger.error("the hand-off did not settle within %.0f s; %d trades read last are left for the "
                                 "next task to fetch again", FINAL_HANDOVER, dropped)
            await self._end_reports([handle])
        finally:
            self.handles.pop(handle.sid, None)
            handle.done.set()

    def _stop_all(self, reason: str) -> None:
        """Every stream of this process ends, within a bound whatever the exchange and Redis do: the
        connections close (STOP_GRACE), what was read is handed on (FINAL_HANDOVER), the leases are
        released (FINAL_REDIS). The next stream task starts a new generation."""
        generation, self.generation = self.generation, None
        handles = [h for h in self.handles.values() if not h.stopping]
        for handle in handles:
            handle.stopping = True
            handle.reason = reason if handle.failure is None else f"failed: {describe(handle.failure)}"
        if generation is not None:
            generation.stop.set()
            generation.fence.disarm()
        if generation is not None or handles:
            self._keep(self._stop_generation(generation, handles), "stop all")

    async def _stop_generation(self, generation: Generation | None, handles: list[StreamHandle]) -> None:
        if handles:
            logger.info("stopping %d streams: %s", len(handles), handles[0].reason)
        if generation is not None:
            await generation.wind_down()
        await self._end_reports(handles)
        if generation is not None:
            await generation.broadcaster.close()
        for handle in handles:
            self.handles.pop(handle.sid, None)
            handle.done.set()

    async def _end_reports(self, handles: list[StreamHandle]) -> None:
        """The streams' last statuses (out of any client now) and failure records, then their leases released
        (each bounded)."""
        await self._reporter_of().report_ended(handles)
        if handles:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(FINAL_REDIS):
                    await release_leases(self._redis_client(), [h.lease for h in handles])

    async def _shutdown(self) -> None:
        self._stop_all("runtime closing")
        while self.handles:
            await asyncio.sleep(0.05)
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None


_RUNTIME: Runtime | None = None
_RUNTIME_LOCK = threading.Lock()


def runtime(shutdown: ShutdownSignal) -> Runtime:
    """This process's runtime, made by the first stream task, stopped by the process's `shutdown` signal.
    Under a lock: the threads pool starts many stream tasks in the same instant, and `functools.cache` let
    each of them make a runtime of its own (a loop, a client and connections each)."""
    global _RUNTIME  # noqa: PLW0603 - the process's one runtime
    with _RUNTIME_LOCK:
        if _RUNTIME is None:
            _RUNTIME = Runtime(shutdown)
        return _RUNTIME

