"""The stored trades.

Two layouts behind one model, `PriceUpdate` (docs/dataset.md, "Storage"):
- PostgreSQL: the lean table `streams_trade` (`StoredTrade`), partitioned by month of trade time
  (streams/partitions.py), with a small instrument id instead of the symbol and channel texts, and
  `streams_priceupdate` a view over it that gives back the seed's columns. Storage writes the table;
  everything else reads the view. Migrations change the view and the table by hand (0002 shows how):
  Django's own schema operations would try to alter a view.
- SQLite (the embedded default): `streams_priceupdate` is a plain table with every column.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connections, models

from streams.binance.protocol import AGG_TRADE, TRADE, Trade, stream_text

# Binance quotes every spot price and quantity with 8 decimals; 20 integer digits cover the largest.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
PRICE_DIGITS = 28
PRICE_DECIMALS = 8


class Channel(models.TextChoices):
    TRADE = TRADE, "trade"
    AGG_TRADE = AGG_TRADE, "aggTrade"


class Instrument(models.Model):
    """A stream kind of a symbol, (symbol, channel): trades carry its small id instead of the two texts.
    Made by storage the first time a trade of it is stored; never deleted (ids are cached per process)."""

    id = models.SmallAutoField(primary_key=True)
    symbol = models.CharField(max_length=20)
    channel = models.CharField(max_length=8, choices=Channel.choices)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["symbol", "channel"], name="unique_instrument")]
        ordering = ["symbol", "channel"]

    def __str__(self) -> str:
        return stream_text(self.symbol, self.channel)


class StoredTrade(models.Model):
    """The PostgreSQL trades table itself, `streams_trade` (partitioned; see streams/partitions.py).

    Lean, because there will be billions of rows (docs/design.md): the instrument's 2-byte id instead of
    the symbol and channel texts; the event and receive times as microseconds after the trade time in
    4-byte integers (`event_time`/`received_time` hold them whole only when that does not fit: more than
    35 minutes apart); NULL where there is nothing to say, which costs no bytes (the event time of a REST
    or archive trade is its trade time, and it was not received live; `first_trade_id`/`last_trade_id`
    are aggTrade's); the columns in an order that wastes no alignment padding; the decimals as numeric
    without a declared precision, so that the exchange's text comes back exactly as it was sent
    (streams.storage refuses what numeric(28,8) would not hold). Only storage writes it; read `PriceUpdate`.
    """

    pk = models.CompositePrimaryKey("instrument", "trade_id")
    trade_time = models.DateTimeField()
    trade_id = models.BigIntegerField()
    first_trade_id = models.BigIntegerField(null=True)
    last_trade_id = models.BigIntegerField(null=True)
    event_time = models.DateTimeField(null=True)
    received_time = models.DateTimeField(null=True)
    event_after_us = models.IntegerField(null=True)
    received_after_us = models.IntegerField(null=True)
    instrument = models.ForeignKey(Instrument, models.DO_NOTHING, db_constraint=False, related_name="+")
    is_market_maker = models.BooleanField()
    price = models.DecimalField(max_digits=PRICE_DIGITS, decimal_places=PRICE_DECIMALS)
    volume = models.DecimalField(max_digits=PRICE_DIGITS, decimal_places=PRICE_DECIMALS)

    class Meta:
        db_table = "streams_trade"
        required_db_vendor = "postgresql"  # SQLite keeps one plain table (PriceUpdate's)


class PriceUpdateQuerySet(models.QuerySet["PriceUpdate"]):
    """`filter(ticker_symbol=S, channel=C)` (both in one call, as text) becomes one equality on the
    instrument id, `instrument_id = (SELECT id FROM streams_instrument WHERE ...)`: PostgreSQL evaluates the
    subquery once and then walks the (instrument_id, trade_id) index of each partition in order, where a
    condition on the view's joined texts would make it sort. `pk`/`key` lookups are parsed into the same."""

    def _filter_or_exclude(self, negate: bool, args: Any, kwargs: Any) -> PriceUpdateQuerySet:
        # exclude() keeps the view's own columns: NOT (instrument_id = NULL), for a stream that has no
        # instrument yet, would exclude every row.
        lookups = kwargs if negate else _by_instrument(kwargs)
        # Django's private hook, which the stubs leave out (hence the ignore).
        queryset: PriceUpdateQuerySet = super()._filter_or_exclude(negate, args, lookups)  # type: ignore[misc]
        return queryset

    def delete(self) -> tuple[int, dict[str, int]]:
        """On PostgreSQL the rows live in `streams_trade` (a view cannot be deleted from): delete there."""
        connection = connections[self.db]
        if connection.vendor != "postgresql":
            return super().delete()
        rows = self.order_by().values_list("instrument_id", "trade_id", "trade_time")
        sql, params = rows.query.get_compiler(using=self.db).as_sql()
        delete = (f"DELETE FROM {StoredTrade._meta.db_table} t USING ({sql}) AS d (i, n, at) "  # noqa: S608
                  "WHERE t.instrument_id = d.i AND t.trade_id = d.n AND t.trade_time = d.at")  # the ORM's own SQL
        with connection.cursor() as cursor:
            cursor.execute(delete, params)
            deleted = int(cursor.rowcount)
        return deleted, {self.model._meta.label: deleted}

    # Django's marks on a queryset method, set as attributes of the function (hence the ignores).
    delete.alters_data = True  # type: ignore[attr-defined]
    delete.queryset_only = True  # type: ignore[attr-defined]


def _by_instrument(kwargs: dict[str, Any]) -> dict[str, Any]:
    key = kwargs.get("pk", kwargs.get("key"))
    if isinstance(key, str) and (parsed := parse_key(key)) is not None:
        kwargs = {k: v for k, v in kwargs.items() if k not in ("pk", "key")}
        kwargs.update(ticker_symbol=parsed[0], channel=parsed[1], trade_id=parsed[2])
    symbol, channel = kwargs.get("ticker_symbol"), kwargs.get("channel")
    if not (isinstance(symbol, str) and isinstance(channel, str)):
        return kwargs
    rest = {k: v for k, v in kwargs.items() if k not in ("ticker_symbol", "channel")}
    rest["instrument"] = models.Subquery(Instrument.objects.filter(symbol=symbol, channel=channel).values("id")[:1])
    return rest


def trade_key(symbol: str, channel: str, trade_id: int) -> str:
    """The primary key Django sees: `BTCUSDT:trade:3635713053` (the exchange's identity of a trade)."""
    return f"{symbol}:{channel}:{trade_id}"


def parse_key(key: str) -> tuple[str, str, int] | None:
    symbol, _, rest = key.partition(":")
    channel, _, number = rest.partition(":")
    return (symbol, channel, int(number)) if symbol and channel and number.isdigit() else None


class PriceUpdate(models.Model):
    """One trade (or aggregate trade) as the exchange reported it; unique on the exchange's identity
    (symbol, channel, trade id). On PostgreSQL a row of the view over `streams_trade`.

    No default ordering: at billions of rows every order is a choice. Within one stream, trade ids
    follow trade time, so `order_by("-trade_id")` is the cheap way to the latest trades (the index walks
    it); ordering by trade time sorts.
    """

    key = models.CharField(primary_key=True, max_length=64, editable=False,
                           help_text="symbol:channel:trade id (the exchange's identity of the trade)")
    instrument = models.ForeignKey(Instrument, models.DO_NOTHING, db_constraint=False, related_name="+")
    ticker_symbol = models.CharField(max_length=20)
    channel = models.CharField(max_length=8, choices=Channel.choices, default=Channel.TRADE)
    trade_id = models.BigIntegerField(help_text="trade id (t), or aggregate trade id (a) for aggTrade")
    price = models.DecimalField(max_digits=PRICE_DIGITS, decimal_places=PRICE_DECIMALS)
    volume = models.DecimalField(max_digits=PRICE_DIGITS, decimal_places=PRICE_DECIMALS)
    trade_time = models.DateTimeField()
    event_time = models.DateTimeField(help_text="the stream's event time; the trade time for REST backfills")
    received_time = models.DateTimeField(null=True, blank=True,
                                         help_text="when this service received it; empty for REST and archive trades")
    is_market_maker = models.BooleanField(help_text="the buyer was the maker (m)")
    first_trade_id = models.BigIntegerField(null=True, blank=True, help_text="aggTrade only (f)")
    last_trade_id = models.BigIntegerField(null=True, blank=True, help_text="aggTrade only (l)")

    objects = PriceUpdateQuerySet.as_manager()

    class Meta:
        # On SQLite these are the table's own; on PostgreSQL each partition of streams_trade has the
        # identity index, and the latest trades of a stream are its highest ids.
        constraints = [models.UniqueConstraint(fields=["instrument", "trade_id"], name="trade_identity")]
        indexes = [models.Index(fields=["instrument", "-trade_time"], name="latest_trades")]

    def as_trade(self) -> Trade:
        """The stored row as the protocol's Trade: exact decimal text, times in microseconds."""
        received = None if self.received_time is None else micros(self.received_time)
        return Trade(self.ticker_symbol, self.channel, self.trade_id, f"{self.price:f}", f"{self.volume:f}",
                     micros(self.trade_time), micros(self.event_time), self.is_market_maker,
                     self.first_trade_id, self.last_trade_id, received)

    def __str__(self) -> str:
        return f"{self.ticker_symbol} {self.channel} #{self.trade_id} {self.volume} @ {self.price}"


def micros(moment: datetime) -> int:
    """Microseconds since the epoch, exactly."""
    return (moment - _EPOCH) // _MICROSECOND



class SealedDay(models.Model):
    """One stream's UTC day in the Parquet lake (streams/lake/): the manifest that vouches for its file.

    Written after the file is in place; every verification (the scrub, `coverage --recheck`) reads the file
    and compares it with this record. `complete` is the coverage verdict when the file was written: a day
    imported from an archive file with holes is in the lake but not complete, and is sealed again once healed.
    """

    class State(models.TextChoices):
        SEALED = "sealed"
        DAMAGED = "damaged"  # the file is missing, altered or short: rebuilt from the other tier or the archive

    class Source(models.TextChoices):
        DATABASE = "database"  # sealed from the stored rows
        ARCHIVE = "archive"    # written straight from an archive file
        MERGED = "merged"      # the lake's file and the database's rows of the day, together

    market = models.CharField(max_length=8, default="spot")
    symbol = models.CharField(max_length=20)
    channel = models.CharField(max_length=8, choices=Channel.choices)
    day = models.DateField()
    rows = models.BigIntegerField()
    first_id = models.BigIntegerField(null=True, blank=True)
    last_id = models.BigIntegerField(null=True, blank=True)
    sha256 = models.CharField(max_length=64)
    bytes = models.BigIntegerField()
    source = models.CharField(max_length=8, choices=Source.choices)
    complete = models.BooleanField(help_text="the day was proven complete when its file was written")
    state = models.CharField(max_length=8, choices=State.choices, default=State.SEALED)
    problem = models.TextField(blank=True, help_text="what the last verification found wrong")
    sealed_at = models.DateTimeField()
    verified_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["market", "symbol", "channel", "day"], name="unique_sealed_day")]
        indexes = [models.Index(fields=["verified_at"], name="sealed_day_verified")]

    def __str__(self) -> str:
        return f"{self.market} {self.symbol} {self.channel} {self.day}: {self.state}"
