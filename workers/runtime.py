"""The streams worker's runtime: one event loop per process hosts every stream task of the process.

Celery still runs one long-running task per symbol stream — its own lease, stop flag, status and task
events: the unit an operator sees and stops — but the task's thread only hands its stream to this
runtime and waits (`Runtime.run_stream`). The runtime owns the shared parts: one StreamClient whose
streams share combined connections, one runner pumping every stream's trades into the Redis hand-off
buffer (one script per batch, the resume point of each stream moving with its trades), one heartbeat
for all streams (lease renewals in one script, stop flags in one read, statuses and counters in one
pipeline), one broadcaster. Batching per process, not per trade (issue 9).

The promises of issue 8 stay: everything runs supervised (an unexpected error ends every stream of the
client, logged once, and the supervisor restarts them); the leases are fenced (no renewal confirmed
within 3/4 of the TTL: every connection is dropped before a lease can expire); stops are bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection

from streams.binance.backoff import RETRY
from streams.binance.client import StreamClient
from streams.binance.logcontext import stream_context
from streams.binance.protocol import Trade, split_stream_name
from streams.binance.rest import BinanceRest
from streams.binance.streamid import StreamId, by_stream
from streams.broadcast import ALL_TRADES_GROUP, Broadcaster
from streams.config import client_config
from streams.failures import describe, is_transient
from streams.runner import Runner
from streams.storage import last_stored_ids
from workers.budget import RedisWeightBudget, take_connection_slot
from workers.buffer import BufferFull, append_trades
from workers.deadletters import BAD_FRAME, DeadLetter, dead_letter_async
from workers.keys import (
    COUNTED,
    FAILURES,
    ID_REGRESSIONS,
    counters_key,
    last_failure_key,
    last_id_key,
    lease_key,
    starting_key,
    stop_key,
)
from workers.leases import Lease
from workers.redis import async_redis
from workers.status import StreamStatus, queue_status

logger = logging.getLogger(__name__)

STOP_GRACE = 5.0       # s for a clean stop of the connections
FINAL_HANDOVER = 3.0   # s to hand what was read to the buffer once stopping
FINAL_REDIS = 1.0      # s for each last Redis call (statuses, lease releases)
FENCE_AT = 0.75        # of the lease TTL after a renewal was sent: drop every connection if none confirmed since
EVENT_EVERY = 30.0     # s between two task events of a stream whose state did not change (Flower)
HAND_OFF_TICK = 0.05   # s a hand-off batch gathers the trades of every stream (issue 9: per process, not per trade)
REDIS_CONNECTIONS = 16  # the runtime's own; its work is pipelined (issue 9: <= 50 Redis connections a process)
_REGRESSIONS_KEPT = 10_000
_STREAM_IN_FRAME = re.compile(r'"stream":"([a-z0-9]+@[A-Za-z]+)"')

# Renew every lease this process holds, in one step: 1 for each one still ours, 0 for one that is not.
_RENEW_ALL = """
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('get', key) == ARGV[i] then
    redis.call('pexpire', key, ARGV[#ARGV]); out[i] = 1
  else out[i] = 0 end
end
return out
"""
_RELEASE_ALL = """
for i, key in ipairs(KEYS) do
  if redis.call('get', key) == ARGV[i] then redis.call('del', key) end
end
return 1
"""


@dataclass
class Outcome:
    """Why a stream task ended, and what it handed on."""

    reason: str
    trades: int = 0
    status: StreamStatus | None = None
    failed: bool = False


class ShutdownSignal:
    """The worker process is shutting down: wakes the runtime's loop at once (no polling)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: set[Callable[[], None]] = set()

    def set(self) -> None:
        self._event.set()
        with self._lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            callback()

    def clear(self) -> None:
        self._event.clear()

    def is_set(self) -> bool:
        return self._event.is_set()

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from the signalling thread) when the signal is set, or now if it is."""
        with self._lock:
            self._callbacks.add(callback)
        if self._event.is_set():
            callback()


@dataclass
class _Handle:
    """One stream task hosted here."""

    sid: StreamId
    owner: str
    lease: Lease
    publish: Callable[[StreamStatus], None] | None
    started: float = field(default_factory=time.monotonic)
    handed: int = 0
    handed_at: float = field(default_factory=time.monotonic)
    errors: int = 0
    last_error: str = ""
    reason: str = ""
    failure: BaseException | None = None
    stopping: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)
    counted: dict[str, int] = field(default_factory=dict)
    published: tuple[str, float] = ("", 0.0)  # (state, monotonic) of the last task event


class Runtime:
    """One per streams-worker process (`runtime()`); tests may make their own."""

    def __init__(self, shutdown: ShutdownSignal | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.set_default_executor(ThreadPoolExecutor(max_workers=4, thread_name_prefix="stream-io"))
        self._thread = threading.Thread(target=self._loop.run_forever, name="stream-runtime", daemon=True)
        self._thread.start()
        self.handles: dict[str, _Handle] = {}
        self.client: StreamClient | None = None
        self._redis: redis.asyncio.Redis | None = None
        self._broadcaster: Broadcaster | None = None
        self._sink: BufferSink | None = None
        self._runner: Runner | None = None            # the current generation's pump
        self._pump_task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._finishing: set[asyncio.Task[None]] = set()  # stream ends and generation stops under way
        self._generation_stop = asyncio.Event()
        self._fence: _Fence | None = None
        self._buffer_full = False
        self._errors = 0
        self._last_error = ""
        self._error_run = 0
        self._connection_wait = 0.0
        self._shutdown_signal = shutdown
        if shutdown is not None:
            shutdown.subscribe(lambda: self._loop.call_soon_threadsafe(self._stop_all, "worker shutting down"))

    # --- the Celery task's side (any thread) --------------------------------------------------------

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
                resume = await self._resume_point(sid)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                logger.warning("cannot start: %s; the supervisor will start it again", describe(exc))
                return Outcome(f"cannot start: {describe(exc)}", failed=True)
            handle = _Handle(sid, owner, lease, publish)
            # The shared parts run outside any one stream's logging context (their lines name streams).
            first = not self.handles
            self.handles[sid] = handle
            client = contextvars.Context().run(self._ensure_client)
            if first:  # the fence runs from the oldest lease not renewed since: only the first one sets it
                self._fence_confirmed(sent)
            contextvars.Context().run(client.add, sid, resume)
            logger.info("started by %s, resuming after %s", owner, resume if resume is not None else "nothing stored")
            await self._report(handle, "starting")
            await handle.done.wait()
            logger.info("stopped (%s) after handing %d trades to the buffer", handle.reason, handle.handed)
            return Outcome(handle.reason, handle.handed, self._status(handle), failed=handle.failure is not None)

    async def _resume_point(self, sid: StreamId) -> int | None:
        """The newer of the last stored id and the last id handed to the buffer (not flushed yet). With the
        database away, the buffer's id alone (a hole before it is found and filled by the audit)."""
        try:
            stored = await sync_to_async(_last_stored_then_close, thread_sensitive=False)(sid)
        except Exception as exc:
            if not is_transient(exc):
                raise
            logger.warning("database unavailable for the resume point (%s); resuming from the buffer's last id",
                           describe(exc))
            stored = {}
        handed = await self._redis_client().get(last_id_key(sid))
        candidates = [value for value in (stored.get(sid), int(handed) if handed else None) if value]
        return max(candidates) if candidates else None

    def _redis_client(self) -> redis.asyncio.Redis:
        """One client for every stream of the process, at most REDIS_CONNECTIONS connections (they wait)."""
        if self._redis is None:
            self._redis = async_redis(max_connections=REDIS_CONNECTIONS)
        return self._redis

    # --- the shared client, its pump and its heartbeat ----------------------------------------------

    def _ensure_client(self) -> StreamClient:
        """The client of the current generation; a new one after a failure or a fence."""
        if self.client is not None:
            return self.client
        config = client_config([])
        rest = BinanceRest(config.rest_url, micros=config.micros, budget=RedisWeightBudget(
            self._redis_client(), budget=settings.BINANCE_REST_WEIGHT_BUDGET,
            window=settings.BINANCE_REST_WEIGHT_WINDOW))
        self.client = StreamClient(config, rest=rest, before_connect=self._take_slot)
        self.client.start()
        self._generation_stop = asyncio.Event()
        # One group: each web process joins it once and fans the trades out to its pages by symbol
        # (web.live.hub); a group per symbol cost one group_send per symbol and batch.
        self._broadcaster = Broadcaster([ALL_TRADES_GROUP], per_symbol=False)
        self._sink = BufferSink(self)
        self._runner = Runner(self.client, self._sink, linger=HAND_OFF_TICK)
        self._fence = _Fence(settings.COLLECTOR_LEASE_TTL, self._fenced)
        self._fence.arm(asyncio.get_running_loop())
        self._broadcaster.start(self._spawn)
        self._pump_task = self._spawn(self._pump(self._runner), "pump")
        self._spawn(self._heartbeat(), "heartbeat")
        return self.client

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
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

    async def _pump(self, runner: Runner) -> None:
        try:
            await runner.pump(self._generation_stop)
        except Exception as exc:  # the client failed (logged where it happened): every stream ends
            self._end_generation(exc)

    def _end_generation(self, error: BaseException) -> None:
        """The client failed or was fenced: every stream it carried ends (the supervisor restarts them)."""
        for handle in list(self.handles.values()):
            if handle.failure is None and not handle.stopping:
                handle.failure = error
        self._stop_all(f"failed: {describe(error)}")

    async def _take_slot(self) -> None:
        self._connection_wait = await take_connection_slot(
            self._redis_client(), limit=settings.COLLECTOR_CONNECTION_BUDGET,
            window=settings.COLLECTOR_CONNECTION_WINDOW)

    def on_handed(self, trades: list[Trade]) -> None:
        """The sink handed `trades` to the buffer: count them per stream, broadcast them."""
        now = time.monotonic()
        for sid, handed in by_stream(trades).items():
            handle = self.handles.get(sid)
            if handle is not None:
                handle.handed += len(handed)
                handle.handed_at = now
        if self._broadcaster is not None:
            self._broadcaster.offer(trades)

    # --- the heartbeat: one round trip or two for every stream of the process ------------------------

    async def _heartbeat(self) -> None:
        interval = settings.COLLECTOR_HEARTBEAT_INTERVAL
        retry = RETRY["lease renewal"].within(interval).backoff()
        delay = interval
        stop = self._generation_stop
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set() or not self.handles:
                continue
            renewed = await self._renew_leases()
            await self._beat()
            if renewed:
                retry.reset()
                delay = interval
            else:
                delay = retry.next_delay()  # sooner than a beat: the fence is running

    async def _renew_leases(self) -> bool:
        handles = [h for h in self.handles.values() if not h.stopping]
        if not handles:
            return True
        sent = time.monotonic()
        remaining = self._fence.remaining() if self._fence is not None else settings.COLLECTOR_LEASE_TTL
        try:
            owned = await asyncio.wait_for(self._redis_client().eval(
                _RENEW_ALL, len(handles), *(lease_key(h.sid) for h in handles), *(h.owner for h in handles),
                int(settings.COLLECTOR_LEASE_TTL * 1000)), timeout=max(0.01, remaining))
        except Exception as exc:
            if not is_transient(exc):
                raise
            self._note_error("lease renewal", exc)
            return False
        self._fence_confirmed(sent)
        for handle, ours in zip(handles, owned, strict=True):
            if not ours:
                self._detach(handle, "lease lost")
        return True

    async def _beat(self) -> None:
        """Stop flags, statuses, counters, dead letters and ids that went back, for every stream."""
        handles = [h for h in self.handles.values() if not h.stopping]
        if not handles:
            return
        client = self._redis_client()
        try:
            async with asyncio.timeout(settings.COLLECTOR_HEARTBEAT_INTERVAL):
                flags = await client.mget([stop_key(h.sid) for h in handles])
                for handle, flag in zip(handles, flags, strict=True):
                    if flag is not None and flag.decode() in ("*", handle.owner):
                        self._detach(handle, "stop requested")
                await self._hand_evidence()
                await self._report_all([h for h in handles if not h.stopping])
        except Exception as exc:
            if not is_transient(exc):
                raise
            self._note_error("heartbeat", exc)
            return
        self._recovered()

    async def _report_all(self, handles: list[_Handle], state: str | None = None) -> None:
        statuses = [(h, self._status(h, state)) for h in handles]
        ttl = int(settings.COLLECTOR_STALE_AFTER * 2 * 1000)
        async with self._redis_client().pipeline(transaction=False) as pipe:
            for handle, status in statuses:
                queue_status(pipe, handle.sid, status, ttl / 1000)
                for name, delta in self._count(handle, status).items():
                    pipe.hincrby(counters_key(handle.sid), name, delta)
            await pipe.execute()
        for handle, status in statuses:
            for name in COUNTED:
                handle.counted[name] = getattr(status, name)
            self._publish(handle, status)

    async def _report(self, handle: _Handle, state: str | None = None) -> None:
        with contextlib.suppress(Exception):  # the first and last statuses are best effort
            async with asyncio.timeout(FINAL_REDIS):
                await self._report_all([handle], state)

    @staticmethod
    def _count(handle: _Handle, status: StreamStatus) -> dict[str, int]:
        """What grew since the last report (the stream's counters in Redis outlive its tasks)."""
        deltas = {name: getattr(status, name) - handle.counted.get(name, 0) for name in COUNTED}
        return {name: delta for name, delta in deltas.items() if delta > 0}

    def _publish(self, handle: _Handle, status: StreamStatus) -> None:
        """A task event for Flower when the state changed, or every EVENT_EVERY seconds."""
        if handle.publish is None:
            return
        state, last = handle.published
        now = time.monotonic()
        if status.state != state or now - last >= EVENT_EVERY:
            handle.published = (status.state, now)
            handle.publish(status)

    async def _hand_evidence(self) -> None:
        """Bad frames go to the dead letters (with their stream when the frame names it), ids that went back
        to the audit's list."""
        client = self.client
        if client is None:
            return
        letters = client.stats.dead_letters
        if letters:
            bad = [DeadLetter(BAD_FRAME, _stream_of(frame), reason, frame) for _, reason, frame in letters]
            letters.clear()
            await dead_letter_async(self._redis_client(), bad)
        rows = []
        for handle in self.handles.values():
            state = client.streams.get(handle.sid)
            if state is not None and state.regressions:
                rows += [orjson.dumps(tuple(t)) for t in state.regressions]
                state.regressions.clear()
        if rows:
            async with self._redis_client().pipeline(transaction=False) as pipe:
                pipe.lpush(ID_REGRESSIONS, *rows)
                pipe.ltrim(ID_REGRESSIONS, 0, _REGRESSIONS_KEPT - 1)
                await pipe.execute()

    def _status(self, handle: _Handle, state: str | None = None) -> StreamStatus:
        client = self.client
        now = time.monotonic()
        stream = client.streams.get(handle.sid) if client is not None else None
        if client is None or stream is None:
            return StreamStatus(state=state or ("stopped" if handle.stopping else "starting"), worker=handle.owner,
                                trades=handle.handed, errors=handle.errors + self._errors,
                                last_error=handle.last_error or self._last_error)
        slot = stream.slot
        frame_age = None
        if slot is not None and slot.primary is not None:
            frame_age = round(now - slot.primary.last_frame_at, 3)
        waiting = bool(self._sink and self._sink.pending_for(handle.sid)) or client.backlogged
        stuck = max(client.stuck_for(handle.sid), now - handle.handed_at if waiting else 0.0)
        connected_at = client.connected_at_of(handle.sid)
        return StreamStatus(
            state=state or ("waiting for buffer room" if self._buffer_full else client.state_of(handle.sid)),
            worker=handle.owner,
            connected_for=None if connected_at is None else round(now - connected_at, 3),
            last_frame_age=frame_age,
            last_trade_age=None if stream.last_trade_at is None else round(now - stream.last_trade_at, 3),
            stuck_for=round(stuck, 3),
            trades=handle.handed,
            trades_per_s=round(handle.handed / max(now - handle.started, 1e-9), 2),
            messages=slot.frames if slot is not None else 0,
            reconnects=client.reconnects_of(handle.sid),
            gaps_found=stream.gaps_found,
            gaps_healed=stream.gaps_healed,
            missed=stream.missed,
            ids_back=stream.ids_back,
            parse_errors=client.stats.parse_errors,
            lag_ms=stream.lag_ms,
            last_trade_ts=stream.last_event_ts or None,
            connection_wait=round(self._connection_wait, 1),
            broadcast_dropped=self._broadcaster.stats.trades_dropped if self._broadcaster is not None else 0,
            errors=handle.errors + self._errors,
            last_error=handle.last_error or self._last_error,
        )

    def _note_error(self, what: str, exc: BaseException) -> None:
        """A transient error of the process (Redis away): counted, shown on every stream, logged once a run."""
        self._errors += 1
        self._last_error = f"{what}: {describe(exc)}"
        self._error_run += 1
        if self._error_run == 1:
            logger.warning("%s failed (%s); retrying", what, describe(exc))

    def _recovered(self) -> None:
        if self._error_run:
            logger.info("recovered after %d failed attempts (%s)", self._error_run, self._last_error)
            self._error_run = 0

    # --- fencing, stops --------------------------------------------------------------------------------

    def _fence_confirmed(self, sent: float) -> None:
        if self._fence is not None:
            self._fence.confirmed(sent)

    def _fenced(self) -> None:
        """No lease renewal was confirmed in time: drop every exchange connection now, before a lease can
        expire and another task take a stream (DESIGN.md promise 3)."""
        if not self.handles:
            return
        ttl = settings.COLLECTOR_LEASE_TTL
        self._note_error("lease", TimeoutError(f"no renewal confirmed within {ttl * FENCE_AT:.1f} s"))
        logger.error("the leases could not be confirmed within %.1f s of their %.0f s TTL; dropping every "
                     "connection of this process before another task can take a stream", ttl * FENCE_AT, ttl)
        if self.client is not None:
            self.client.abort("lease not confirmed (fenced)")
        self._stop_all("lease not confirmed (fenced)")

    def _detach(self, handle: _Handle, reason: str) -> None:
        """End one stream: unsubscribe it, keep what was read of it, release its lease, end its task."""
        if handle.stopping:
            return
        handle.stopping = True
        handle.reason = reason
        with stream_context(handle.sid):
            logger.info("stopping: %s", reason)
        client = self.client
        if client is not None and self._sink is not None:
            self._sink.keep(client.take_stream(handle.sid))
            client.remove(handle.sid)
        self._keep(self._finish(handle, self._runner), f"finish {handle.sid}")

    def _keep(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    async def _finish(self, handle: _Handle, runner: Runner | None) -> None:
        try:
            if self._sink is not None and self._sink.pending_for(handle.sid):
                # In order: the older trades of the stream that the pump may hold go first, so that its resume
                # point never passes a trade not handed on yet.
                if await _settled(runner, FINAL_HANDOVER):
                    await self._sink.close(FINAL_HANDOVER)
                else:
                    dropped = self._sink.drop(handle.sid)
                    logger.error("the hand-off did not settle within %.0f s; %d trades read last are left for the "
                                 "next task to fetch again", FINAL_HANDOVER, dropped)
            await self._report(handle, "failed" if handle.failure else "stopped")
            if handle.failure is not None:
                await self._record_failure(handle)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(FINAL_REDIS):
                    await handle.lease.release()
        finally:
            self.handles.pop(handle.sid, None)
            handle.done.set()

    async def _record_failure(self, handle: _Handle) -> None:
        assert handle.failure is not None
        with contextlib.suppress(Exception):  # the failure is logged already; Redis may be what failed
            async with asyncio.timeout(FINAL_REDIS), self._redis_client().pipeline(transaction=False) as pipe:
                pipe.hincrby(FAILURES, str(handle.sid), 1)
                pipe.hincrby(counters_key(handle.sid), "task_failures", 1)
                pipe.set(last_failure_key(handle.sid),
                         orjson.dumps({"error": describe(handle.failure), "owner": handle.owner}))
                await pipe.execute()

    def _stop_all(self, reason: str) -> None:
        """Every stream of this process ends, within a bound whatever the exchange and Redis do: the
        connections close (STOP_GRACE), what was read is handed on (FINAL_HANDOVER), the leases are
        released (FINAL_REDIS). The next stream task starts a new client."""
        client, self.client = self.client, None
        sink, broadcaster, pump = self._sink, self._broadcaster, self._pump_task
        handles = [h for h in self.handles.values() if not h.stopping]
        for handle in handles:
            handle.stopping = True
            handle.reason = reason if handle.failure is None else f"failed: {describe(handle.failure)}"
        self._generation_stop.set()
        if self._fence is not None:
            self._fence.disarm()
        if client is not None or handles:
            self._keep(self._stop_generation(client, sink, broadcaster, handles, pump), "stop all")

    async def _stop_generation(self, client: StreamClient | None, sink: BufferSink | None,
                               broadcaster: Broadcaster | None, handles: list[_Handle],
                               pump: asyncio.Task[None] | None) -> None:
        if handles:
            logger.info("stopping %d streams: %s", len(handles), handles[0].reason)
        if client is not None:
            await client.stop(timeout=STOP_GRACE)
            if sink is not None:
                await _keep_the_rest(client, sink, pump)
            with contextlib.suppress(Exception):  # closing an HTTP pool: nothing to save
                await client.rest.aclose()
        if sink is not None:
            unwritten = await sink.close(FINAL_HANDOVER)
            if unwritten:
                logger.error("%d trades read could not be handed to the buffer within %.0f s; the next tasks "
                             "fetch them again from the exchange", unwritten, FINAL_HANDOVER)
        await asyncio.gather(*(self._report(h, "failed" if h.failure else "stopped") for h in handles))
        for handle in handles:
            if handle.failure is not None:
                await self._record_failure(handle)
        if handles:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(FINAL_REDIS):
                    await self._redis_client().eval(_RELEASE_ALL, len(handles), *(lease_key(h.sid) for h in handles),
                                                    *(h.owner for h in handles))
        if broadcaster is not None:
            await broadcaster.close()
        for handle in handles:
            self.handles.pop(handle.sid, None)
            handle.done.set()

    async def _shutdown(self) -> None:
        self._stop_all("runtime closing")
        while self.handles:
            await asyncio.sleep(0.05)
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None


class BufferSink:
    """The runtime's sink: the Redis hand-off buffer (one script per batch, each stream's resume point in
    the same step), retried on the one backoff schedule while the buffer is full or Redis is away."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self.pending: list[Trade] = []

    async def write(self, trades: list[Trade]) -> None:
        backoff = RETRY["hand-off"].backoff()
        while True:
            try:
                await append_trades(self._runtime._redis_client(), trades, last_ids=_last_ids(trades))
            except BufferFull:
                if not self._runtime._buffer_full:
                    logger.error("the hand-off buffer is full; holding every stream of this process")
                self._runtime._buffer_full = True
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self._runtime._note_error("hand-off to the buffer", exc)
            else:
                self._runtime._buffer_full = False
                self._runtime._recovered()
                self._runtime.on_handed(trades)
                return
            await asyncio.sleep(backoff.next_delay())

    def keep(self, trades: list[Trade]) -> None:
        self.pending += trades

    def drop(self, sid: StreamId) -> int:
        """Forget the kept trades of one stream (its resume point was not moved past them)."""
        kept = [t for t in self.pending if not sid.owns(t)]
        dropped, self.pending = len(self.pending) - len(kept), kept
        return dropped

    def pending_for(self, sid: StreamId) -> bool:
        return any(sid.owns(t) for t in self.pending)

    async def close(self, timeout: float) -> int:
        if not self.pending:
            return 0
        pending, self.pending = self.pending, []
        try:
            async with asyncio.timeout(timeout):
                await self.write(pending)
        except TimeoutError:
            return len(pending)
        return 0


async def _keep_the_rest(client: StreamClient, sink: BufferSink, pump: asyncio.Task[None] | None) -> None:
    """What the stopped client still has goes after the batch the pump holds: the pump keeps that one and
    ends first, so that no resume point passes a trade not handed on yet."""
    if pump is not None:
        await asyncio.wait({pump}, timeout=FINAL_HANDOVER)
        if not pump.done():  # it never gets here (the pump's waits end at the stop); if it did: fetch again
            logger.error("the pump did not end within %.0f s; the trades read last are left for the next tasks "
                         "to fetch again", FINAL_HANDOVER)
            sink.pending.clear()
            return
    sink.keep(client.take_ready(10**9))


async def _settled(runner: Runner | None, timeout: float) -> bool:
    """Until the pump holds no batch (True), or `timeout` passed (False)."""
    if runner is None or runner.idle.is_set():
        return True
    try:
        async with asyncio.timeout(timeout):
            await runner.idle.wait()
    except TimeoutError:
        return False
    return True


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


class _Fence:
    """Calls `on_fence` unless each lease renewal is confirmed within FENCE_AT of the TTL after the
    previous confirmed one was sent: a timer on the loop, independent of the heartbeat's own flow."""

    def __init__(self, ttl: float, on_fence: Callable[[], None]) -> None:
        self._ttl = ttl
        self._on_fence = on_fence
        self._valid_from = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def arm(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._schedule()

    def confirmed(self, sent_at: float) -> None:
        self._valid_from = max(self._valid_from, sent_at)
        self._schedule()

    def remaining(self) -> float:
        return self._valid_from + self._ttl * FENCE_AT - time.monotonic()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._loop = None

    def _schedule(self) -> None:
        if self._loop is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(max(0.0, self.remaining()), self._on_fence)


def _last_ids(trades: list[Trade]) -> dict[str, int]:
    """The last id of each stream in a batch (trades of a stream come in id order)."""
    return {last_id_key(sid): handed[-1].trade_id for sid, handed in by_stream(trades).items()}


def _stream_of(frame: str) -> str:
    match = _STREAM_IN_FRAME.search(frame)
    if match is None:
        return "-"
    try:
        split_stream_name(match[1])
    except ValueError:
        return "-"
    return match[1]


def _last_stored_then_close(sid: StreamId) -> dict[StreamId, int]:
    """The last stored id, on a short-lived executor thread whose connection must not linger."""
    try:
        return last_stored_ids([sid])
    finally:
        connection.close()

