"""One write path for trades: every writer stores through `workers.store`, and what the database refuses is
dead-lettered with the writer named, counted per writer, and returned."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from decimal import Decimal

import pytest
from django.db import DEFAULT_DB_ALIAS, connections, transaction

from streams.archive import ArchiveFormatError
from streams.binance.protocol import TRADE, Trade
from streams.lake.layout import DayKey
from streams.lake.schema import table_from_trades
from streams.models import PriceUpdate
from workers import archive_fill, audit
from workers.archive_import import store_hot_day
from workers.buffer import append_trades, flush_all
from workers.deadletters import REFUSED, dead_letter_total, recent_dead_letters
from workers.redis import async_redis, sync_redis
from workers.store import ARCHIVE_FILL, ARCHIVE_IMPORT, AUDIT, FLUSH, ONE_OFF, refused_counts, store_for

pytestmark = pytest.mark.django_db(transaction=True)

CAP = Decimal("100.5")  # the database's own check refuses prices at or above it: a content error Python cannot see


def make(trade_id: int, price: str) -> Trade:
    return Trade("BTCUSDT", TRADE, trade_id, price, "0.10000000", 1723161255342 + trade_id, 1723161255343 + trade_id,
                 False)


@pytest.fixture
def price_cap(clean_redis: None) -> Iterator[None]:
    with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
        cursor.execute(f"ALTER TABLE streams_trade ADD CONSTRAINT test_price_cap CHECK (price < {CAP})")
    try:
        yield
    finally:
        with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
            cursor.execute("ALTER TABLE streams_trade DROP CONSTRAINT test_price_cap")


def through_the_flush(trades: list[Trade]) -> None:
    async def append() -> None:
        client = async_redis()
        try:
            await append_trades(client, trades)
        finally:
            await client.aclose()

    asyncio.run(append())
    flush_all(sync_redis(), "test")


def through_the_archive_import(trades: list[Trade]) -> None:
    day = trades[0].trade_time.date()
    with pytest.raises(ArchiveFormatError, match="refused 1 trades"), transaction.atomic():  # whole or not at all
        store_hot_day(DayKey("spot", "BTCUSDT", TRADE, day), table_from_trades(trades))


WRITERS: dict[str, Callable[[list[Trade]], object]] = {
    FLUSH: through_the_flush,
    AUDIT: audit._store,
    ARCHIVE_FILL: archive_fill._store,
    ARCHIVE_IMPORT: through_the_archive_import,
    ONE_OFF: lambda trades: store_for(ONE_OFF)(trades, DEFAULT_DB_ALIAS),
}


@pytest.mark.parametrize("source", list(WRITERS))
def test_every_writer_dead_letters_what_the_database_refuses_and_names_itself(source: str, price_cap: None) -> None:
    trades = [make(1, "100.00000000"), make(2, "101.00000000"), make(3, "100.25000000")]
    WRITERS[source](trades)
    letters = recent_dead_letters(sync_redis())
    assert [(letter.kind, letter.source, letter.stream) for letter in letters] == [(REFUSED, source, "btcusdt@trade")]
    assert "test_price_cap" in letters[0].reason and '"101.00000000"' in letters[0].data
    assert dead_letter_total(sync_redis()) == 1
    assert refused_counts(sync_redis()) == {name: int(name == source) for name in WRITERS}
    if source != ARCHIVE_IMPORT:  # the others store the rest of the batch
        assert sorted(PriceUpdate.objects.values_list("trade_id", flat=True)) == [1, 3]


def test_the_refusals_are_counted_per_writer_in_the_metrics(price_cap: None) -> None:
    from workers.metrics import render

    audit._store([make(1, "101.00000000"), make(2, "102.00000000")])
    archive_fill._store([make(3, "103.00000000")])
    text = render().decode()
    assert 'collector_trades_refused_total{source="audit"} 2.0' in text
    assert 'collector_trades_refused_total{source="archive fill"} 1.0' in text
    assert 'collector_trades_refused_total{source="flush"} 0.0' in text
