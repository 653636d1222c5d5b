"""The fake exchange's copy of data.binance.vision: zipped CSV files of its record, monthly and daily, each
with a `.CHECKSUM`, served under `/data/spot/` on the REST port; and the archive's known faults.

Layout and format as binance/binance-public-data documents them: `data/spot/{monthly,daily}/{trades,aggTrades}/<SYM>/
<SYM>-{trades,aggTrades}-YYYY-MM[-DD].zip` holding one `<same name>.csv` without a header (trades: `id, price,
qty, quoteQty, time, isBuyerMaker, isBestMatch`; aggTrades: `aggId, price, qty, firstId, lastId, time,
isBuyerMaker, isBestMatch`; booleans `True`/`False`, time in microseconds from 2025-01-01 on and in
milliseconds before), and `<zip name>.CHECKSUM` holding `<sha256>  <zip name>`. A file is published once its
period has ended (plus `publish_delay`); a missing key answers S3's 404 `NoSuchKey`.

Faults (`withhold`, `corrupt`, `drop_trades`, `republish`, or POST /fake/archive): a daily file not
published yet, a CHECKSUM that does not match its file, a file published with trades missing (Binance's
own files have had holes), and a re-published file (new bytes, new checksum; faults cleared). Tests also
`replace` a file with bytes of their own (a bad row, a zip bomb, a CRC error under a right checksum) and
`trickle` an answer (one byte every so many seconds).
"""

from __future__ import annotations

import bisect
import hashlib
import io
import logging
import re
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from streams.binance.protocol import Trade
from streams.fake.market import Market, micros, quote_quantity

logger = logging.getLogger(__name__)

_PATH_RE: Final = re.compile(
    r"/data/spot/(monthly|daily)/(trades|aggTrades)/([A-Z0-9]{2,20})/([A-Z0-9]{2,20})-(trades|aggTrades)-"
    r"(\d{4}-\d{2}(?:-\d{2})?)\.zip(\.CHECKSUM)?"
)
TRADES_DATASET: Final = "trades"
AGG_DATASET: Final = "aggTrades"
_MICROSECONDS_FROM: Final = date(2025, 1, 1)
_CACHE_FILES: Final = 8
ZIP_CONTENT_TYPE: Final = "application/zip"
CHECKSUM_CONTENT_TYPE: Final = "text/plain"
XML_CONTENT_TYPE: Final = "application/xml"

Answer = tuple[int, bytes, str]  # status, body, content type


@dataclass
class _FileFaults:
    version: int = 0  # bumped by each re-publication: new bytes, new checksum
    withheld: bool = False
    corrupt: bool = False
    dropped: int = 0  # trades left out of the middle of the file
    replaced: bytes | None = None  # served instead of the file built from the record (a test's own zip)
    trickle: float = 0.0  # seconds between two bytes of the answer (a server that hardly sends)


def parse_period(text: str) -> tuple[date, bool]:
    """(first day, monthly) from `2026-11` or `2026-11-03`; ValueError otherwise."""
    if len(text) == 7:
        return datetime.strptime(text, "%Y-%m").replace(tzinfo=UTC).date(), True
    return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC).date(), False


def _period_end(start: date, monthly: bool) -> date:
    if not monthly:
        return start + timedelta(days=1)
    return date(start.year + start.month // 12, start.month % 12 + 1, 1)


def _ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 1000


def csv_bytes(trades: list[Trade], in_micros: bool, dataset: str = TRADES_DATASET) -> bytes:
    """The archive's CSV of `trades` (the fake's record keeps milliseconds; µs as its REST answers them):
    `id,price,qty,quoteQty,time,isBuyerMaker,isBestMatch` for trades, `aggId,price,qty,firstId,lastId,time,
    isBuyerMaker,isBestMatch` for aggTrades, no header (binance-public-data's README, SPOT)."""
    def when(t: Trade) -> int:
        return micros(t.trade_ts) if in_micros else t.trade_ts

    if dataset == AGG_DATASET:
        return "".join(f"{t.trade_id},{t.price_text},{t.quantity_text},{t.first_trade_id},{t.last_trade_id},"
                       f"{when(t)},{t.is_buyer_maker},True\n" for t in trades).encode("ascii")
    return "".join(
        f"{t.trade_id},{t.price_text},{t.quantity_text},{quote_quantity(t)},{when(t)},{t.is_buyer_maker},True\n"
        for t in trades
    ).encode("ascii")


def not_found(key: str) -> Answer:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchKey</Code>'
        f"<Message>The specified key does not exist.</Message><Key>{key}</Key></Error>"
    )
    return 404, body.encode(), XML_CONTENT_TYPE


class FakeArchive:
    """The archive of a set of markets, built from their record on demand (the newest files cached)."""

    def __init__(
        self,
        markets: Mapping[str, Market],
        *,
        publish_delay: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.markets = markets
        self.publish_delay = publish_delay  # seconds after a period's end before its file appears
        self.clock = clock
        self.requests = 0
        self._faults: dict[tuple[str, str], _FileFaults] = {}
        self._cache: OrderedDict[tuple[str, str, int, int], bytes] = OrderedDict()

    # --- serving ---------------------------------------------------------------------------------

    def respond(self, method: str, path: str) -> Answer:
        """The answer to GET `path` (`/data/spot/...`)."""
        self.requests += 1
        key = path.lstrip("/")
        match = _PATH_RE.fullmatch(path)
        if method not in ("GET", "HEAD") or match is None:
            return not_found(key)
        kind, folder, folder_symbol, symbol, dataset, label, checksum = match.groups()
        try:
            _, monthly = parse_period(label)
        except ValueError:
            return not_found(key)
        if folder_symbol != symbol or folder != dataset or monthly != (kind == "monthly") or not self.published(
                symbol, label, dataset):
            return not_found(key)
        if checksum:
            return 200, self.checksum_text(symbol, label, dataset).encode(), CHECKSUM_CONTENT_TYPE
        return 200, self.file_bytes(symbol, label, dataset), ZIP_CONTENT_TYPE

    def trickle_of(self, path: str) -> float:
        """Seconds between two bytes of the answer to `path` (0: at once)."""
        match = _PATH_RE.fullmatch(path)
        if match is None or match.group(7):
            return 0.0
        return self._fault(match.group(4), match.group(6), match.group(5)).trickle

    def published(self, symbol: str, label: str, dataset: str = TRADES_DATASET) -> bool:
        """Is the file out: a market with trades by then, its period over (plus the delay), not withheld."""
        market = self.markets.get(symbol)
        if market is None or not market.trades:
            return False
        start, monthly = parse_period(label)
        end_ms = _ms(_period_end(start, monthly))
        if end_ms + self.publish_delay * 1000 > self.clock() * 1000:
            return False
        if market.trades[0].trade_ts >= end_ms:
            return False  # before the symbol traded: the archive has no file
        return not self._fault(symbol, label, dataset).withheld

    def file_name(self, symbol: str, label: str, dataset: str = TRADES_DATASET) -> str:
        return f"{symbol}-{dataset}-{label}.zip"

    def trades(self, symbol: str, label: str, dataset: str = TRADES_DATASET) -> list[Trade]:
        """The trades a file holds (its period's trades of the record, less any dropped by a fault)."""
        market = self.markets[symbol]
        start, monthly = parse_period(label)
        record = market.agg_trades if dataset == AGG_DATASET else market.trades
        lo = bisect.bisect_left(record, _ms(start), key=_trade_ts)
        hi = bisect.bisect_left(record, _ms(_period_end(start, monthly)), key=_trade_ts)
        trades = record[lo:hi]
        dropped = self._fault(symbol, label, dataset).dropped
        if dropped:
            middle = len(trades) // 2
            trades = trades[:middle] + trades[middle + dropped :]
        return trades

    def file_bytes(self, symbol: str, label: str, dataset: str = TRADES_DATASET) -> bytes:
        """The zip file, built once per version (the newest few kept)."""
        faults = self._fault(symbol, label, dataset)
        if faults.replaced is not None:
            return faults.replaced
        key = (symbol, f"{dataset}:{label}", faults.version, faults.dropped)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        start, _ = parse_period(label)
        data = _zip(
            self.file_name(symbol, label, dataset).removesuffix(".zip") + ".csv",
            csv_bytes(self.trades(symbol, label, dataset), start >= _MICROSECONDS_FROM, dataset),
            faults.version,
        )
        self._cache[key] = data
        while len(self._cache) > _CACHE_FILES:
            self._cache.popitem(last=False)
        return data

    def checksum_text(self, symbol: str, label: str, dataset: str = TRADES_DATASET) -> str:
        digest = hashlib.sha256(self.file_bytes(symbol, label, dataset)).hexdigest()
        if self._fault(symbol, label, dataset).corrupt:
            digest = hashlib.sha256(digest.encode()).hexdigest()  # a CHECKSUM of some other upload
        return f"{digest}  {self.file_name(symbol, label, dataset)}\n"

    # --- faults ----------------------------------------------------------------------------------

    def withhold(self, symbol: str, label: str, withheld: bool = True) -> None:
        """The file is not published (yet): 404, CHECKSUM included."""
        self._fault(symbol, label).withheld = withheld

    def corrupt(self, symbol: str, label: str) -> None:
        """The CHECKSUM no longer matches the file (a broken upload)."""
        self._fault(symbol, label).corrupt = True

    def drop_trades(self, symbol: str, label: str, count: int) -> None:
        """The file is published with `count` trades missing from its middle (a hole in Binance's file)."""
        if count < 1:
            raise ValueError(f"count {count!r} must be >= 1")
        self._fault(symbol, label).dropped = count

    def republish(self, symbol: str, label: str, dataset: str = TRADES_DATASET) -> None:
        """A new upload of the file: whole, matching its CHECKSUM, new bytes (so a new checksum)."""
        faults = self._fault(symbol, label, dataset)
        faults.version += 1
        faults.withheld = faults.corrupt = False
        faults.dropped = 0
        faults.replaced = None

    def replace(self, symbol: str, label: str, data: bytes, dataset: str = TRADES_DATASET) -> None:
        """Serve `data` as the file (its CHECKSUM matching it): a broken or hostile upload a test builds, as
        Binance's own files have been (a bad row, a CRC error inside a file whose checksum is right)."""
        self._fault(symbol, label, dataset).replaced = data

    def trickle(self, symbol: str, label: str, seconds_per_byte: float, dataset: str = TRADES_DATASET) -> None:
        """Answer the file one byte every `seconds_per_byte` (a server that hardly sends)."""
        self._fault(symbol, label, dataset).trickle = seconds_per_byte

    def control(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """POST /fake/archive: {"action": withhold|publish|corrupt|drop_trades|republish, "symbol", "period"
        (2026-11 or 2026-11-03), "count" (drop_trades)}."""
        action, symbol, label = spec.get("action"), str(spec.get("symbol", "")).upper(), str(spec.get("period", ""))
        if symbol not in self.markets:
            raise ValueError(f"unknown symbol {symbol!r}")
        parse_period(label)
        if action == "withhold":
            self.withhold(symbol, label)
        elif action == "publish":
            self.withhold(symbol, label, withheld=False)
        elif action == "corrupt":
            self.corrupt(symbol, label)
        elif action == "drop_trades":
            self.drop_trades(symbol, label, int(spec.get("count", 1)))
        elif action == "republish":
            self.republish(symbol, label)
        else:
            raise ValueError(f"unknown archive action {action!r}")
        logger.info("fake archive: %s %s %s", action, symbol, label)
        return {"ok": True}

    def _fault(self, symbol: str, label: str, dataset: str = TRADES_DATASET) -> _FileFaults:
        key = (symbol, label) if dataset == TRADES_DATASET else (symbol, f"{dataset}:{label}")
        return self._faults.setdefault(key, _FileFaults())


def _trade_ts(trade: Trade) -> int:
    return trade.trade_ts


def _zip(member: str, data: bytes, version: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        # The member's date changes with each re-publication: new bytes, as a real re-upload has.
        info = zipfile.ZipInfo(member, date_time=(2020, 1, 1, 0, 0, 2 * (version % 30)))
        info.compress_type = zipfile.ZIP_DEFLATED
        archive.writestr(info, data)
    return buffer.getvalue()
