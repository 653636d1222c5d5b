"""The migration that moves an installation's trades from the seed's table into the lean layout, and back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connections
from django.db.migrations.loader import MigrationLoader

from streams.binance.protocol import AGG_TRADE, TRADE, Trade
from streams.models import PriceUpdate
from streams.storage import store_trades

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "sqlite"])

SEED = "0001_initial"
# SQLite keeps ~15 significant digits (docs/dataset.md, "What SQLite keeps"); PostgreSQL every one of numeric(28,8).
EXTREME = {"default": "99999999999999999999.99999999", "sqlite": "9999999.99999999"}
FIELDS = ("ticker_symbol", "channel", "trade_id", "price", "volume", "trade_time", "event_time", "is_market_maker",
          "first_trade_id", "last_trade_id")


def seed_rows(model: Any, extreme: str) -> list[Any]:
    """Trades as the seed stored them: two symbols, both channels, years apart, REST trades (event time =
    trade time), microsecond times, an event time far from its trade time, and an `extreme` price."""
    rows = []
    start = datetime(2019, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)
    for n in range(1, 301):
        at = start + timedelta(days=n * 7, microseconds=n * 131)
        channel = AGG_TRADE if n % 5 == 0 else TRADE
        rows.append(model(
            ticker_symbol="BTCUSDT" if n % 3 else "ETHUSDT", channel=channel, trade_id=10**12 + n,
            price=Decimal(f"{61837 + n}.{n:02d}000000"), volume=Decimal("0.00057000"), trade_time=at,
            event_time=at if n % 4 == 0 else at + timedelta(milliseconds=n),
            is_market_maker=n % 2 == 0, first_trade_id=n * 3 if channel == AGG_TRADE else None,
            last_trade_id=n * 3 + 2 if channel == AGG_TRADE else None))
    at = datetime(2026, 11, 30, 23, 59, 59, 999999, tzinfo=UTC)
    rows.append(model(ticker_symbol="BTCUSDT", channel=TRADE, trade_id=2**63 - 1,
                      price=Decimal(extreme), volume=Decimal("0.00000001"), trade_time=at,
                      event_time=at + timedelta(minutes=40), is_market_maker=True))
    return rows


def migrate(alias: str, target: str | None = None) -> Any:
    """`manage.py migrate` (which also tells storage to forget the instrument ids it knew); the apps of
    streams' `target` state."""
    call_command("migrate", "streams", *([target] if target else []), database=alias, verbosity=0)
    return MigrationLoader(connections[alias]).project_state(("streams", target)).apps if target else None


@pytest.mark.parametrize("alias", ["default", "sqlite"])
def test_an_installations_trades_move_into_the_new_layout_unchanged(alias: str) -> None:
    # Trades stored in the new layout go back to the seed's table when migrating back...
    live = Trade("SOLUSDT", TRADE, 5, "142.12000000", "3.00000000", 1764547200123456, 1764547200124000, False,
                 received_us=1764547200130000)
    store_trades([live], alias)
    seed_apps = migrate(alias, SEED)
    seed_model = seed_apps.get_model("streams", "PriceUpdate")
    assert list(seed_model.objects.using(alias).values_list("ticker_symbol", "trade_id", "price", "trade_time")) == [
        ("SOLUSDT", 5, Decimal("142.12000000"), live.trade_time)]
    # ... and an installation's trades, made with the seed's own model, come forward unchanged.
    seed_model.objects.using(alias).bulk_create(seed_rows(seed_model, EXTREME[alias]))
    before = list(seed_model.objects.using(alias).order_by("ticker_symbol", "channel", "trade_id").values_list(*FIELDS))
    assert len(before) == 302
    migrate(alias)
    after = PriceUpdate.objects.using(alias).order_by("ticker_symbol", "channel", "trade_id")
    assert list(after.values_list(*FIELDS)) == before
    assert {row.received_time for row in after} == {None}  # not known for trades stored before
    assert [row.pk for row in after[:2]] == ["BTCUSDT:aggTrade:1000000000005", "BTCUSDT:aggTrade:1000000000010"]
    # The identity still refuses a stored trade, and new trades go on being stored beside the moved ones.
    assert store_trades([live, live._replace(trade_id=6)], alias).inserted == 1
    if alias == "default":
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT price::text FROM streams_priceupdate WHERE trade_id = %s", [2**63 - 1])
            assert cursor.fetchone() == ("99999999999999999999.99999999",)
            cursor.execute("SELECT count(*), count(event_time), count(event_after_us) FROM streams_trade")
            assert cursor.fetchone() == (303, 1, 227)  # REST trades: nothing; 40 minutes: whole; else µs after
            cursor.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'streams_trade'::regclass")
            assert cursor.fetchone()[0] >= 84  # a month each from 2020-01 to 2026-12
