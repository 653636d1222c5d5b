"""Leases, the shared connection budget and the supervisor's decisions, on the real Redis."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from workers.budget import take_connection_slot
from workers.keys import StreamId, lease_key, stop_key, stream_id
from workers.leases import Lease
from workers.redis import async_redis, sync_redis
from workers.status import StreamStatus, queue_status, write_status_now
from workers.supervisor import ensure_running, supervise

SID = stream_id("BTCUSDT", "trade")


async def test_a_lease_has_one_owner_and_only_the_owner_renews_or_releases_it(clean_redis: None) -> None:
    client = async_redis()
    try:
        first, second = Lease(client, SID, "a", ttl=5), Lease(client, SID, "b", ttl=5)
        assert await first.acquire() and not await second.acquire()
        assert await first.renew() and not await second.renew()
        await second.release()
        assert await client.get(lease_key(SID)) == b"a"
        await first.release()
        assert await second.acquire()
    finally:
        await client.aclose()


async def test_an_expired_lease_is_lost_and_renewal_says_so(clean_redis: None) -> None:
    client = async_redis()
    try:
        lease = Lease(client, SID, "a", ttl=0.2)
        assert await lease.acquire()
        deadline = time.monotonic() + 5
        while await client.exists(lease_key(SID)):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert not await lease.renew()
    finally:
        await client.aclose()


async def test_the_connection_budget_is_never_exceeded_by_many_takers(clean_redis: None) -> None:
    client = async_redis()
    taken: list[float] = []
    waits: list[float] = []

    async def taker() -> None:
        await take_connection_slot(client, limit=3, window=1.0, on_wait=waits.append)
        taken.append(time.monotonic())

    try:
        await asyncio.gather(*(taker() for _ in range(7)))
    finally:
        await client.aclose()
    taken.sort()
    assert len(taken) == 7 and waits  # some had to wait, and said so
    for i, start in enumerate(taken):  # never more than 3 attempts within any one-second window
        assert sum(1 for t in taken[i:] if t < start + 0.95) <= 3


class Starts:
    def __init__(self) -> None:
        self.sids: list[StreamId] = []

    def __call__(self, sid: StreamId) -> None:
        self.sids.append(sid)


def write_status(**fields: Any) -> None:
    values: dict[str, Any] = {"state": "connected", "last_frame_age": 0.0, **fields}
    write_status_now(sync_redis(), SID, StreamStatus(**values), ttl=60)


def test_a_stream_without_a_task_is_started_once(clean_redis: None, settings: Any) -> None:
    starts = Starts()
    assert ensure_running(SID, starts) == "started"
    assert ensure_running(SID, starts) == "starting"  # dispatched, not yet running: not dispatched again
    assert starts.sids == [SID]


def test_a_live_stream_is_left_alone(clean_redis: None, settings: Any) -> None:
    starts = Starts()
    sync_redis().set(lease_key(SID), "worker-1:42:task-1")
    assert ensure_running(SID, starts) == "running"  # just started: a lease, no status yet
    write_status()
    assert ensure_running(SID, starts) == "running" and starts.sids == []


def test_a_stale_stream_is_taken_over(clean_redis: None, settings: Any) -> None:
    settings.COLLECTOR_STALE_AFTER = 5.0
    starts = Starts()
    client = sync_redis()
    client.set(lease_key(SID), "worker-1:42:task-1")
    write_status(last_frame_age=30.0)  # an open socket that delivers nothing
    assert ensure_running(SID, starts) == "stopping stale"
    assert client.get(stop_key(SID)) == b"worker-1:42:task-1"  # the old task is told to stop
    # One owner per stream: the lease is not taken from the old task; it releases it when it stops.
    assert starts.sids == [] and client.get(lease_key(SID)) == b"worker-1:42:task-1"
    client.delete(lease_key(SID))  # the old task stopped and released it
    assert ensure_running(SID, starts) == "started" and starts.sids == [SID]


def test_a_running_stream_that_is_not_enabled_is_stopped_and_re_enabling_clears_that(
        clean_redis: None, settings: Any) -> None:
    client = sync_redis()
    client.set(lease_key(SID), "worker-1:42:task-1")
    revoked: list[str] = []
    actions = supervise([], Starts(), revoked.extend)
    assert actions.stopped == [SID] and client.get(stop_key(SID)) == b"*" and revoked == ["task-1"]
    supervise([], Starts(), revoked.extend)  # asked already: not revoked again at every pass
    assert revoked == ["task-1"]
    client.delete(lease_key(SID))
    starts = Starts()
    supervise([SID], starts)
    assert starts.sids == [SID] and not client.exists(stop_key(SID))



# --- a pass over many streams: one read, one write, whatever their number -----------------------------------

class RoundTrips:
    """Counts what the supervisor's Redis client sends: pipelines and single commands."""

    def __init__(self, monkeypatch: Any) -> None:
        self.count = 0
        client = sync_redis()
        for owner, name in ((type(client), "execute_command"), (type(client.pipeline()), "execute")):
            original = getattr(owner, name)

            def counted(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
                self.count += 1
                return _original(*args, **kwargs)

            monkeypatch.setattr(owner, name, counted)


def test_a_pass_over_many_streams_takes_a_few_round_trips_and_decides_each_one(
        clean_redis: None, settings: Any, monkeypatch: Any) -> None:
    settings.COLLECTOR_STALE_AFTER = 5.0
    client = sync_redis()
    sids = [stream_id(f"M{i:03d}USDT", "trade") for i in range(400)]
    with client.pipeline(transaction=False) as pipe:
        for i, sid in enumerate(sids[:300]):  # 300 running; every 10th of them stale
            pipe.set(lease_key(sid), f"w:1:task-{i}")
            age = 30.0 if i % 10 == 0 else 0.0
            queue_status(pipe, sid, StreamStatus(state="connected", last_frame_age=age), ttl=60)
        for sid in sids[300:350]:  # 50 disabled before (a stop flag for anyone), enabled again, not running
            pipe.set(stop_key(sid), "*")
        pipe.set(lease_key(StreamId.parse("gone@trade")), "w:1:task-gone")  # running, not enabled
        pipe.execute()
    starts = Starts()
    trips = RoundTrips(monkeypatch)
    actions = supervise(sids, starts, lambda task_id: None)
    assert trips.count <= 5  # read, act, the lease scan, the stop of the unwanted one, the pass's mark
    assert len(actions.running) == 270 and actions.restarted == sids[:300:10]
    assert starts.sids == actions.started == sids[300:] and actions.stopped == [StreamId.parse("gone@trade")]
    assert client.get(stop_key(sids[10])) == b"w:1:task-10" and not client.exists(stop_key(sids[300]))
    again = supervise(sids, starts, lambda task_id: None)  # dispatched, no lease yet: not dispatched again
    assert again.started == [] and again.restarted == [] and len(starts.sids) == 100
