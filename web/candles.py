"""/api/candles/: OHLCV bars from the dataset (streams.dataset.candles), exact decimals as text.

Two forms:
- The live page's: `?symbol=BTCUSDT[&interval=1m]`: the current UTC day of the symbol's live stream (`trade`
  when enabled, else `aggTrade`), with the stream's latest stored trades (the page's tape and one-second bars)
  and `through_trade_id`, the newest id the answer counts, so that the page adds only later live trades.
  Anyone may ask it, for an enabled symbol only: its cost is one day of one stream whatever the number of
  enabled streams, and the answer is kept per symbol for LIVE_CANDLES_CACHE seconds, so that a crowd of pages
  costs one read. The bars that are over are kept longer still (and read again every few minutes, for trades
  stored late): each answer reads only the last minutes of the day from the database.
- Any range: `?symbol=&from=&to=[&channel=][&market=][&interval=]`: staff or the metrics token, at most
  DATASET_API_MAX_DAYS days.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

import pyarrow as pa
from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from streams import dataset, formats
from streams.binance.errors import InvalidStreamName
from streams.binance.protocol import normalize_symbol
from streams.broadcast import trade_message
from streams.lake import candles as bars
from streams.models import PriceUpdate
from web.access import may_see_internals, refused
from web.trades_api import selection_of, within_limit

SETTLE: Final = timedelta(seconds=60)  # bars that ended longer ago than this are kept: their trades are stored
CLOSED_REFRESH: Final = 300.0          # s: the kept bars are read again this often (trades stored late)
_UNIT_SECONDS: Final = {"minute": 60, "hour": 3600, "day": 86_400}
_RANGE_PARAMETERS: Final = ("from", "to", "channel", "market")


@dataclass(frozen=True)
class Closed:
    """A day's bars that are over: read once, then only the bars after `until` are read per answer."""

    day: date
    table: pa.Table
    until: datetime
    through: int | None
    read_at: float  # monotonic


_closed: dict[tuple[str, str, str], Closed] = {}
_answers: dict[tuple[str, str, str], tuple[float, dict[str, Any]]] = {}
_locks: dict[tuple[str, str, str], threading.Lock] = {}
_locks_lock = threading.Lock()


@require_GET
def candles_api(request: HttpRequest) -> JsonResponse:
    interval = request.GET.get("interval") or "1m"
    if interval not in bars.INTERVALS:
        return JsonResponse({"error": f"unknown interval {interval!r}; expected one of {', '.join(bars.INTERVALS)}"},
                            status=400)
    if any(request.GET.get(name) for name in _RANGE_PARAMETERS):
        if not may_see_internals(request, public=False):
            return refused()
        return _range_answer(request, interval)
    try:
        symbol = normalize_symbol(request.GET.get("symbol") or "")
    except InvalidStreamName as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    from workers.registry import enabled_channels

    channels = enabled_channels(symbol)
    if not channels:
        return JsonResponse({"error": f"{symbol} has no enabled stream"}, status=404)
    return JsonResponse(live_answer(symbol, channels[0], interval))


def _range_answer(request: HttpRequest, interval: str) -> JsonResponse:
    try:
        selection = selection_of(request.GET)
        within_limit(selection, "DATASET_API_MAX_DAYS")
        table, through = dataset.candles_through(selection.symbol, selection.start, selection.end, interval,
                                                 channel=selection.channel, market=selection.market)
    except dataset.DatasetError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    return JsonResponse(_answer(selection, interval, table, through))


def live_answer(symbol: str, channel: str, interval: str, now: datetime | None = None) -> dict[str, Any]:
    """The live page's opening of a symbol (cached per symbol, channel and interval)."""
    key = (symbol, channel, interval)
    with _lock(key):
        cached = _answers.get(key)
        if cached is not None and time.monotonic() - cached[0] < settings.LIVE_CANDLES_CACHE and now is None:
            return cached[1]
        now = now or datetime.now(UTC)
        table, through = day_candles(symbol, channel, interval, now)
        midnight = datetime(now.year, now.month, now.day, tzinfo=UTC)
        day = dataset.Selection("spot", symbol, channel, midnight, midnight + timedelta(days=1))
        answer = _answer(day, interval, table, through)
        answer["trades"] = latest_trades(symbol, channel, through, midnight, settings.LIVE_PAGE_TRADES)
        if answer["trades"]:
            answer["through_trade_id"] = max(through or 0, answer["trades"][-1]["trade_id"])
        if len(_answers) > 10_000:  # symbols disabled since, days gone by
            _answers.clear()
        _answers[key] = (time.monotonic(), answer)
        return answer


def day_candles(symbol: str, channel: str, interval: str, now: datetime) -> tuple[pa.Table, int | None]:
    """The UTC day's bars of the stream (the whole day: trades whose exchange time is ahead of this clock count
    too), and the newest id they count; the bars that are over come from the kept ones."""
    midnight = datetime(now.year, now.month, now.day, tzinfo=UTC)
    key = (symbol, channel, interval)
    closed = _closed.get(key)
    if closed is None or closed.day != midnight.date() or time.monotonic() - closed.read_at > CLOSED_REFRESH:
        until = max(midnight, bar_start(now - SETTLE, interval))
        table, through = dataset.candles_through(symbol, midnight, until, interval, channel=channel)
        closed = Closed(midnight.date(), table, until, through, time.monotonic())
        _closed[key] = closed
    tail, tail_through = dataset.candles_through(symbol, closed.until, midnight + timedelta(days=1), interval,
                                                 channel=channel)
    ids = [i for i in (closed.through, tail_through) if i is not None]
    return bars.merge([closed.table, tail]), max(ids, default=None)


def bar_start(moment: datetime, interval: str) -> datetime:
    multiple, unit = bars.INTERVALS[interval]
    seconds = multiple * _UNIT_SECONDS[unit]
    epoch = int(moment.timestamp())
    return datetime.fromtimestamp(epoch - epoch % seconds, UTC)


def latest_trades(symbol: str, channel: str, through: int | None, midnight: datetime,
                  limit: int) -> list[dict[str, Any]]:
    """The stream's latest stored trades, oldest first: up to `through`, the newest the day's candles count, or
    before the day when they count none (a trade of the day stored since would be in neither the candles nor
    the live trades the page adds after these)."""
    rows = PriceUpdate.objects.filter(ticker_symbol=symbol, channel=channel)
    rows = rows.filter(trade_id__lte=through) if through is not None else rows.filter(trade_time__lt=midnight)
    return [trade_message(row.as_trade()) for row in reversed(rows.order_by("-trade_id")[:limit])]


def _answer(selection: dataset.Selection, interval: str, table: pa.Table, through: int | None) -> dict[str, Any]:
    texts = {name: formats.decimal_text(table.column(name).combine_chunks()).to_pylist()
             for name in ("open", "high", "low", "close", "volume")}
    times = formats.iso_text(table.column("open_time").combine_chunks()).to_pylist()
    candles = [{"open_time": times[i], **{name: texts[name][i] for name in texts},
                "trades": count} for i, count in enumerate(table.column("trades").to_pylist())]
    return {"symbol": selection.symbol, "channel": selection.channel, "market": selection.market,
            "interval": interval, "from": _iso(selection.start), "to": _iso(selection.end), "through_trade_id": through,
            "candles": candles}


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _lock(key: tuple[str, str, str]) -> threading.Lock:
    """One lock per symbol, channel and interval: pages opening at once wait for one read, not each its own."""
    with _locks_lock:
        return _locks.setdefault(key, threading.Lock())


def forget() -> None:
    """Drop every kept answer and bar (tests; a process that wants the dataset read afresh)."""
    _closed.clear()
    _answers.clear()
