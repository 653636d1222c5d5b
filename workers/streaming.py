"""The body of a stream task: lease, resume, stream, hand trades to the buffer, heartbeat, stop cleanly.

One runner owns the cross-cutting work (STYLE.md): the lease and its fence, the heartbeat with the
status, the stop conditions and the hand-off; the stream client does the exchange's part. Everything
runs under one `asyncio.TaskGroup` (issue 8, 1): an unexpected error anywhere is logged once with the
stream id and a traceback, counted, and ends the whole task, which the supervisor restarts with resume.

Bounded stops (issue 8, 1c): from the moment a stop begins, the task is done within STOP_GRACE +
FINAL_HANDOVER + 2 x FINAL_REDIS seconds whatever the exchange or Redis do: a clean stop gets
STOP_GRACE, then everything is cancelled; what was read is then handed to the buffer (bounded), and the
lease is released (bounded). Tasks call `run_stream_until_stopped` inside `run_in_new_loop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import redis.asyncio
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection

from project.logs import stream_context
from streams.binance.backoff import Backoff
from streams.binance.client import StreamClient
from streams.binance.protocol import Trade
from streams.binance.waiting import STOPPED, Stopped, unless_stopped
from streams.broadcast import ALL_TRADES_GROUP, Broadcaster
from streams.config import client_config
from streams.failures import describe, is_transient
from streams.storage import last_stored_ids
from workers.budget import take_connection_slot
from workers.buffer import BufferFull, append_trades
from workers.deadletters import BAD_FRAME, DeadLetter, dead_letter_async
from workers.keys import (
    COUNTED,
    FAILURES,
    ID_REGRESSIONS,
    counters_key,
    last_failure_key,
    last_id_key,
    starting_key,
    stop_key,
    stream_id,
)
from workers.leases import Lease
from workers.redis import async_redis
from workers.status import StreamStatus, write_status

logger = logging.getLogger(__name__)

T = TypeVar("T")

_TAKE = 5_000
STOP_GRACE = 6.0       # s for a clean stop: close frames, the last hand-off
FINAL_HANDOVER = 3.0   # s to hand what was read to the buffer once the grace is over
FINAL_REDIS = 1.0      # s for each last Redis call (status, lease release)
FENCE_AT = 0.75        # of the lease TTL after a renewal was sent: stop streaming if none was confirmed since
_REGRESSIONS_KEPT = 10_000


@dataclass
class Outcome:
    """Why a stream task ended, and what it handed on."""

    reason: str
    trades: int = 0
    status: StreamStatus | None = None
    failed: bool = False


class ShutdownSignal:
    """The worker process is shutting down: wakes every running stream's loop at once (no polling)."""

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

    @contextlib.contextmanager
    def watch(self, callback: Callable[[], None]) -> Iterator[None]:
        """Call `callback` (from the signalling thread) when the signal is set, or now if it is."""
        with self._lock:
            self._callbacks.add(callback)
        try:
            if self._event.is_set():
                callback()
            yield
        finally:
            with self._lock:
                self._callbacks.discard(callback)


def run_in_new_loop(coro: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` without its unbounded wait for the default executor's threads at the end (Python
    3.11 waits for ever): a database call or a DNS lookup stuck in a thread must not hold a worker's
    shutdown. The executor's threads are left to finish on their own."""
    loop = asyncio.new_event_loop()
    executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="stream-io")
    loop.set_default_executor(executor)
    try:
        return loop.run_until_complete(coro)
    finally:
        try:
            _cancel_remaining(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            executor.shutdown(wait=False, cancel_futures=True)
            loop.close()


def _cancel_remaining(loop: asyncio.AbstractEventLoop) -> None:
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.wait(tasks, timeout=1.0))


async def run_stream_until_stopped(symbol: str, channel: str, *, owner: str, shutdown: ShutdownSignal,
                                   on_status: Callable[[StreamStatus], None] | None = None) -> Outcome:
    """Run stream (symbol, channel) while this task holds its lease; see the module docstring."""
    sid = stream_id(symbol, channel)
    with stream_context(sid):
        client = async_redis()
        lease = Lease(client, sid, owner, settings.COLLECTOR_LEASE_TTL)
        try:
            try:
                sent = time.monotonic()
                if not await asyncio.wait_for(lease.acquire(), settings.COLLECTOR_LEASE_TTL * FENCE_AT):
                    logger.info("another task holds the lease; nothing to do")
                    return Outcome("lease held by another task")
                await client.delete(starting_key(sid))  # started: the supervisor may dispatch again if this dies
            except Exception as exc:
                if not is_transient(exc):
                    raise
                logger.warning("cannot start: Redis unavailable (%s); the supervisor will start it again",
                               describe(exc))
                return Outcome("redis unavailable", failed=True)
            runner = _Runner(sid, symbol, channel, owner=owner, redis_client=client, lease=lease,
                             shutdown=shutdown, on_status=on_status, acquired_at=sent)
            try:
                return await runner.run()
            except Exception as exc:  # before the stream started: Redis or the database went away
                if not is_transient(exc):
                    raise
                logger.warning("cannot start: %s; the supervisor will start it again", describe(exc))
                return Outcome(f"cannot start: {describe(exc)}", failed=True)
            finally:
                await _bounded(lease.release(), FINAL_REDIS, "releasing the lease")
        finally:
            await _bounded(client.aclose(), FINAL_REDIS, "closing the Redis client")


async def _bounded(awaitable: Awaitable[Any], timeout: float, what: str) -> bool:
    """Await `awaitable` for at most `timeout` s; a transient failure is logged, not raised. True if done."""
    try:
        await asyncio.wait_for(awaitable, timeout)
    except Exception as exc:
        if not is_transient(exc):
            raise
        logger.warning("%s failed: %s", what, describe(exc))
        return False
    return True


class _Runner:
    def __init__(self, sid: str, symbol: str, channel: str, *, owner: str, redis_client: redis.asyncio.Redis,
                 lease: Lease, shutdown: ShutdownSignal, on_status: Callable[[StreamStatus], None] | None,
                 acquired_at: float) -> None:
        self.sid, self.owner = sid, owner
        self.key = (symbol.upper(), channel)
        self.redis = redis_client
        self.lease = lease
        self.shutdown = shutdown
        self.on_status = on_status
        self.stopping = asyncio.Event()
        self.reason = "stopped"
        self.failure: BaseException | None = None
        self.pending: list[Trade] = []    # taken from the client, not yet in the buffer
        self.handed = 0
        self.handed_at = time.monotonic()
        self.connection_wait = 0.0
        self.buffer_full = False
        self.started = time.monotonic()
        self.errors = 0
        self.last_error = ""
        self._error_run = 0                # consecutive transient errors (logged once per run)
        self._counted: dict[str, int] = {}  # what this task has added to the stream's counters so far
        self._frames_seen = -1
        self._frame_at = time.monotonic()
        self.broadcaster = Broadcaster([ALL_TRADES_GROUP], per_symbol=True)
        self.client: StreamClient | None = None
        self.deadline: asyncio.Timeout | None = None
        self._fence = _Fence(lease.ttl_ms / 1000, self._fenced, acquired_at)

    # --- the task's life ----------------------------------------------------------------------------

    async def run(self) -> Outcome:
        await _bounded(self._report("starting"), FINAL_REDIS, "the first status")
        resume = await self._resume_point()
        logger.info("started by %s, resuming after %s", self.owner, resume or "nothing stored")
        self.client = StreamClient(client_config([self.key]), resume=resume, before_connect=self._take_slot)
        loop = asyncio.get_running_loop()
        self._fence.arm(loop)
        try:
            context = contextvars.copy_context()  # the signal comes on Celery's thread: log with the stream id
            with self.shutdown.watch(lambda: loop.call_soon_threadsafe(self._stop, "worker shutting down",
                                                                       context=context)):
                try:
                    async with asyncio.timeout(None) as self.deadline:
                        await self._supervised()
                except TimeoutError:
                    if self.deadline is None or not self.deadline.expired():
                        raise
                    logger.warning("did not stop within %.0f s; cancelled", STOP_GRACE)
            await self._final_hand_over()
        finally:
            self._fence.disarm()
            await self.broadcaster.close()
            await _bounded(self._report("failed" if self.failure else "stopped"), FINAL_REDIS, "the last status")
            await _bounded(self._count(), FINAL_REDIS, "the last counters")
        logger.info("stopped (%s) after handing %d trades to the buffer", self.reason, self.handed)
        return Outcome(self.reason, self.handed, self._status(None), failed=self.failure is not None)

    async def _supervised(self) -> None:
        """The stream, its heartbeat and its broadcaster: the first unexpected error ends all three."""
        try:
            async with asyncio.TaskGroup() as group:
                self.broadcaster.start(lambda coro, name: group.create_task(coro, name=name))
                group.create_task(self._heartbeat(), name=f"heartbeat {self.sid}")
                group.create_task(self._stream(), name=f"stream {self.sid}")
        except* Exception as errors:
            await self._failed(errors.exceptions[0])

    async def _stream(self) -> None:
        assert self.client is not None
        try:
            async with self.client:
                await self._pump()
        finally:
            self._stop(self.reason if self.stopping.is_set() else "the stream client ended")
            await self.broadcaster.close()

    async def _failed(self, error: BaseException) -> None:
        """Logged once (a failure the client's supervisor logged already is not logged again), counted,
        kept for the status; the task then ends and the supervisor restarts the stream with resume."""
        self.failure = error
        self.reason = f"failed: {describe(error)}"
        if self.client is None or self.client.failure is not error:
            logger.error("stream task failed: %s", describe(error), exc_info=error)
        self.stopping.set()
        with contextlib.suppress(Exception):  # the failure is logged already; Redis may be what failed
            async with asyncio.timeout(FINAL_REDIS), self.redis.pipeline(transaction=False) as pipe:
                pipe.hincrby(FAILURES, self.sid, 1)
                pipe.hincrby(counters_key(self.sid), "task_failures", 1)
                pipe.set(last_failure_key(self.sid), orjson.dumps({"error": describe(error), "owner": self.owner}))
                await pipe.execute()

    def _stop(self, reason: str) -> None:
        """Begin a stop: the pump ends, the client closes; past STOP_GRACE, everything is cancelled."""
        if self.stopping.is_set():
            return
        logger.info("stopping: %s", reason)
        self.reason = reason
        self.stopping.set()
        if self.deadline is not None and self.deadline.when() is None:
            self.deadline.reschedule(asyncio.get_running_loop().time() + STOP_GRACE)

    def _fenced(self) -> None:
        """No lease renewal was confirmed in time: drop the exchange connection now, before the lease can
        expire and another task take the stream (DESIGN.md promise 3)."""
        ttl = self.lease.ttl_ms / 1000
        self._note_error("lease", TimeoutError(f"no renewal confirmed within {ttl * FENCE_AT:.1f} s"))
        logger.error("the lease could not be confirmed within %.1f s of its %.0f s TTL; stopping the stream "
                     "before another task can take it", ttl * FENCE_AT, ttl)
        if self.client is not None:
            self.client.abort("lease not confirmed (fenced)")
        self._stop("lease not confirmed (fenced)")

    # --- handing trades on -----------------------------------------------------------------------------

    async def _pump(self) -> None:
        assert self.client is not None
        while not self.stopping.is_set():
            batch = await unless_stopped(self.client.next_batch(_TAKE), self.stopping)
            if isinstance(batch, Stopped) or not batch:
                return
            self.pending.extend(batch)
            await self._hand_pending(until_stopped=True)

    async def _hand_pending(self, *, until_stopped: bool) -> None:
        """Append the pending trades to the buffer, retrying (the one policy) while it is full or Redis is
        away; with `until_stopped`, give up (keeping them) when a stop begins."""
        backoff = Backoff(0.05, 2.0)
        while self.pending:
            try:
                await append_trades(self.redis, self.pending, last_id_key=last_id_key(self.sid))
            except BufferFull:
                if not self.buffer_full:
                    logger.error("the hand-off buffer is full; holding the stream")
                self.buffer_full = True
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self._note_error("hand-off to the buffer", exc)
            else:
                handed, self.pending = self.pending, []
                self.handed += len(handed)
                self.handed_at = time.monotonic()
                self.buffer_full = False
                self._recovered()
                self.broadcaster.offer(handed)
                return
            if until_stopped:
                if await unless_stopped(asyncio.sleep(backoff.next_delay()), self.stopping) is STOPPED:
                    return
            else:
                await asyncio.sleep(backoff.next_delay())

    async def _final_hand_over(self) -> None:
        """What was read from the socket is handed on too (promise 7), within FINAL_HANDOVER seconds.
        Past it (Redis away), the trades are not lost: the resume point moved only with what was handed,
        so the next task fetches them from REST."""
        if self.client is not None:
            self.pending.extend(self.client.take_ready(10**9))
        if not self.pending:
            return
        try:
            async with asyncio.timeout(FINAL_HANDOVER):
                await self._hand_pending(until_stopped=False)
        except TimeoutError:
            logger.error("%d trades read could not be handed to the buffer within %.0f s; the next task "
                         "fetches them again from the exchange", len(self.pending), FINAL_HANDOVER)

    async def _resume_point(self) -> dict[tuple[str, str], int]:
        """The newer of the last stored id and the last id handed to the buffer (not flushed yet). With the
        database away, the buffer's id alone (a hole before it is found and filled by the audit)."""
        try:
            stored = await sync_to_async(_last_stored_then_close, thread_sensitive=False)(self.key)
        except Exception as exc:
            if not is_transient(exc):
                raise
            logger.warning("database unavailable for the resume point (%s); resuming from the buffer's last id",
                           describe(exc))
            stored = {}
        handed = await self.redis.get(last_id_key(self.sid))
        candidates = [value for value in (stored.get(self.key), int(handed) if handed else None) if value]
        return {self.key: max(candidates)} if candidates else {}

    async def _take_slot(self) -> None:
        self.connection_wait = await take_connection_slot(
            self.redis, limit=settings.COLLECTOR_CONNECTION_BUDGET, window=settings.COLLECTOR_CONNECTION_WINDOW)

    # --- the heartbeat ---------------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        interval = settings.COLLECTOR_HEARTBEAT_INTERVAL
        retry = Backoff(min(0.25, interval), interval)
        delay = interval
        while await unless_stopped(asyncio.sleep(delay), self.stopping) is not STOPPED:
            renewed = await self._renew_lease()
            if self.stopping.is_set():
                return
            await self._beat()
            if renewed:
                retry.reset()
                delay = interval
            else:
                delay = retry.next_delay()  # sooner than a beat: the fence is running

    async def _renew_lease(self) -> bool:
        """Renew the lease within what is left before the fence; True once confirmed."""
        sent = time.monotonic()
        try:
            owned = await asyncio.wait_for(self.lease.renew(), timeout=max(0.01, self._fence.remaining()))
        except Exception as exc:
            if not is_transient(exc):
                raise
            self._note_error("lease renewal", exc)
            return False
        if not owned:
            self._stop("lease lost")
            return False
        self._fence.confirmed(sent)
        return True

    async def _beat(self) -> None:
        """Stop flag, dead letters, id regressions and the status, within one heartbeat interval."""
        try:
            async with asyncio.timeout(settings.COLLECTOR_HEARTBEAT_INTERVAL):
                stop = await self.redis.get(stop_key(self.sid))
                if stop is not None and stop.decode() in ("*", self.owner):
                    self._stop("stop requested")
                await self._hand_evidence()
                await self._report(None)
                await self._count()
        except Exception as exc:
            if not is_transient(exc):
                raise
            self._note_error("heartbeat", exc)
            return
        self._recovered()

    async def _hand_evidence(self) -> None:
        """Bad frames go to the dead letters, ids that went back to the audit's list."""
        if self.client is None:
            return
        letters = self.client.stats.dead_letters
        if letters:
            bad = [DeadLetter(BAD_FRAME, self.sid, reason, frame) for _, reason, frame in letters]
            letters.clear()
            await dead_letter_async(self.redis, bad)
        regressions = self.client.streams[self.key].regressions
        if regressions:
            rows = [orjson.dumps(tuple(t)) for t in regressions]
            regressions.clear()
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.lpush(ID_REGRESSIONS, *rows)
                pipe.ltrim(ID_REGRESSIONS, 0, _REGRESSIONS_KEPT - 1)
                await pipe.execute()

    async def _count(self) -> None:
        """Add what grew since the last beat to the stream's counters in Redis, which outlive this task
        (Prometheus counters never go back when a task restarts)."""
        status = self._status(None)
        deltas = {name: getattr(status, name) - self._counted.get(name, 0) for name in COUNTED}
        deltas = {name: delta for name, delta in deltas.items() if delta > 0}
        if not deltas:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for name, delta in deltas.items():
                pipe.hincrby(counters_key(self.sid), name, delta)
            await pipe.execute()
        for name, delta in deltas.items():
            self._counted[name] = self._counted.get(name, 0) + delta

    def _note_error(self, what: str, exc: BaseException) -> None:
        """A transient error: counted, shown in the status, logged once per run of failures."""
        self.errors += 1
        self.last_error = f"{what}: {describe(exc)}"
        self._error_run += 1
        if self._error_run == 1:
            logger.warning("%s failed (%s); retrying", what, describe(exc))

    def _recovered(self) -> None:
        if self._error_run:
            logger.info("recovered after %d failed attempts (%s)", self._error_run, self.last_error)
            self._error_run = 0

    async def _report(self, state: str | None) -> None:
        status = self._status(state)
        await write_status(self.redis, self.sid, status, ttl=settings.COLLECTOR_STALE_AFTER * 2)
        if self.on_status is not None:
            self.on_status(status)  # must not block (workers.events)

    def _status(self, state: str | None) -> StreamStatus:
        client = self.client
        now = time.monotonic()
        if client is None:
            return StreamStatus(state=state or "starting", worker=self.owner)
        stream = client.streams[self.key]
        frames = client.messages
        if frames != self._frames_seen:
            self._frames_seen, self._frame_at = frames, now
        waiting = bool(self.pending) or client.backlogged
        stuck = max(client.stuck_for(self.key), now - self.handed_at if waiting else 0.0)
        connected_at = client.connected_at
        return StreamStatus(
            state=state or ("waiting for buffer room" if self.buffer_full else client.stats.state),
            worker=self.owner,
            connected_for=None if connected_at is None else round(now - connected_at, 3),
            last_frame_age=round(now - self._frame_at, 3),
            last_trade_age=None if stream.last_trade_at is None else round(now - stream.last_trade_at, 3),
            stuck_for=round(stuck, 3),
            trades=self.handed,
            trades_per_s=round(self.handed / max(now - self.started, 1e-9), 2),
            messages=frames,
            reconnects=client.stats.reconnects,
            gaps_found=stream.gaps_found,
            gaps_healed=stream.gaps_healed,
            missed=stream.missed,
            ids_back=stream.ids_back,
            parse_errors=client.stats.parse_errors,
            lag_ms=client.lag_ms(self.key),
            last_trade_ts=stream.last_event_ts or None,
            connection_wait=round(self.connection_wait, 1),
            broadcast_dropped=self.broadcaster.stats.trades_dropped,
            errors=self.errors,
            last_error=self.last_error,
        )


class _Fence:
    """Calls `on_fence` unless each lease renewal is confirmed within FENCE_AT of the TTL after the
    previous confirmed one was sent: a timer on the loop, independent of the heartbeat's own flow."""

    def __init__(self, ttl: float, on_fence: Callable[[], None], acquired_at: float) -> None:
        self._ttl = ttl
        self._on_fence = on_fence
        self._valid_from = acquired_at  # monotonic: when the last confirmed acquire/renew was sent
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def arm(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._schedule()

    def confirmed(self, sent_at: float) -> None:
        self._valid_from = sent_at
        self._schedule()

    def remaining(self) -> float:
        return self._valid_from + self._ttl * FENCE_AT - time.monotonic()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self) -> None:
        if self._loop is None:
            return
        self.disarm()
        # loop.time() is the monotonic clock too: convert the fence time onto it.
        self._timer = self._loop.call_later(max(0.0, self.remaining()), self._on_fence)


def _last_stored_then_close(key: tuple[str, str]) -> dict[tuple[str, str], int]:
    """The last stored id, on a short-lived executor thread whose connection must not linger."""
    try:
        return last_stored_ids([key])
    finally:
        connection.close()
