"""The lean layout of the trades (docs/dataset.md, "Storage"), and the move of an installation's trades into it.

PostgreSQL: the seed's table is renamed aside; `streams_instrument` gets one row per (symbol, channel);
`streams_trade` is made, partitioned by month of trade time (streams/partitions.py), with a partition per
month from the oldest stored trade to the month after this one; the trades are copied in (then the
identity indexes built, which is faster than inserting into them), the old table dropped, and
`streams_priceupdate` made again as a view with the seed's columns. SQLite: the plain table is made again
with its new columns and the trades copied in. Both run in the migration's one transaction, and both go
back (migrate streams 0001).
"""

# ruff: noqa: S608 - the SQL below is built from this file's constant table names only
from datetime import UTC, datetime

import django.db.models.deletion
from django.db import migrations, models
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.operations.base import Operation
from django.db.migrations.state import ProjectState

from streams import partitions

SEED = "streams_priceupdate_seed"

TRADE_TABLE = """
CREATE TABLE streams_trade (
    trade_time timestamptz NOT NULL,
    trade_id bigint NOT NULL,
    first_trade_id bigint,
    last_trade_id bigint,
    event_time timestamptz,
    received_time timestamptz,
    event_after_us integer,
    received_after_us integer,
    instrument_id smallint NOT NULL,
    is_market_maker boolean NOT NULL,
    price numeric NOT NULL,
    volume numeric NOT NULL
) PARTITION BY RANGE (trade_time)
"""
# event_after_us / received_after_us: the event and receive times, in microseconds after the trade time;
# event_time / received_time hold them instead when that does not fit an integer (35 minutes). A NULL event
# time is the trade time (REST and archive trades have none); both received columns NULL: not received live.

# A day's rows of a monthly partition, found without a second B-tree: trades arrive in time order, so each
# range of 128 pages covers a short span of time (a few kilobytes per month of trades).
TRADE_BRIN = "CREATE INDEX streams_trade_time ON streams_trade USING brin (trade_time)"

VIEW = """
CREATE VIEW streams_priceupdate AS
SELECT i.symbol || ':' || i.channel || ':' || t.trade_id AS key,
       t.instrument_id,
       i.symbol AS ticker_symbol,
       i.channel,
       t.trade_id,
       t.price,
       t.volume,
       t.trade_time,
       COALESCE(t.event_time, t.trade_time + COALESCE(t.event_after_us, 0) * interval '1 microsecond')
           AS event_time,
       COALESCE(t.received_time, t.trade_time + t.received_after_us * interval '1 microsecond') AS received_time,
       t.is_market_maker,
       t.first_trade_id,
       t.last_trade_id
FROM streams_trade t LEFT JOIN streams_instrument i ON i.id = t.instrument_id
"""
# LEFT JOIN (every trade has its instrument): PostgreSQL then drops the join from queries that read no
# column of the instrument, such as counts and id lookups by instrument_id.

_INSTRUMENTS = f"INSERT INTO streams_instrument (symbol, channel) SELECT DISTINCT ticker_symbol, channel FROM {SEED} ORDER BY 1, 2"  # noqa: E501
_TRADE_COLUMNS = ("trade_time, trade_id, first_trade_id, last_trade_id, event_time, received_time, event_after_us, "
                  "received_after_us, instrument_id, is_market_maker, price, volume")
_INT4 = "BETWEEN -2147483648 AND 2147483647"
_SEED_TO_TRADES = f"""
INSERT INTO streams_trade ({_TRADE_COLUMNS})
SELECT s.trade_time, s.trade_id, s.first_trade_id, s.last_trade_id,
       CASE WHEN s.event_after NOT {_INT4} THEN s.event_time END, NULL,
       CASE WHEN s.event_after <> 0 AND s.event_after {_INT4} THEN s.event_after::integer END, NULL,
       i.id, s.is_market_maker, s.price, s.volume
FROM (SELECT *, ((extract(epoch FROM event_time) - extract(epoch FROM trade_time)) * 1000000)::bigint AS event_after
      FROM {SEED}) s
JOIN streams_instrument i ON i.symbol = s.ticker_symbol AND i.channel = s.channel
"""
_TRADES_TO_SEED = """
INSERT INTO streams_priceupdate (ticker_symbol, channel, trade_id, price, volume, trade_time, event_time,
                                 is_market_maker, first_trade_id, last_trade_id)
SELECT ticker_symbol, channel, trade_id, price, volume, trade_time, event_time, is_market_maker, first_trade_id,
       last_trade_id
FROM streams_priceupdate_lean
ORDER BY trade_time, instrument_id, trade_id
"""
_SEED_TO_PLAIN = f"""
INSERT INTO streams_priceupdate (key, instrument_id, ticker_symbol, channel, trade_id, price, volume, trade_time,
                                 event_time, received_time, is_market_maker, first_trade_id, last_trade_id)
SELECT s.ticker_symbol || ':' || s.channel || ':' || s.trade_id, i.id, s.ticker_symbol, s.channel, s.trade_id,
       s.price, s.volume, s.trade_time, s.event_time, NULL, s.is_market_maker, s.first_trade_id, s.last_trade_id
FROM {SEED} s JOIN streams_instrument i ON i.symbol = s.ticker_symbol AND i.channel = s.channel
"""
_PLAIN_TO_SEED = f"""
INSERT INTO streams_priceupdate (ticker_symbol, channel, trade_id, price, volume, trade_time, event_time,
                                 is_market_maker, first_trade_id, last_trade_id)
SELECT ticker_symbol, channel, trade_id, price, volume, trade_time, event_time, is_market_maker, first_trade_id,
       last_trade_id
FROM {SEED} ORDER BY trade_time, instrument_id, trade_id
"""


def postgresql_forwards(schema_editor: BaseDatabaseSchemaEditor) -> None:
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE streams_priceupdate RENAME TO {SEED}")
        cursor.execute(TRADE_TABLE)
        cursor.execute(TRADE_BRIN)
        cursor.execute(_INSTRUMENTS)
        cursor.execute(f"SELECT min(trade_time), max(trade_time) FROM {SEED}")
        oldest, newest = cursor.fetchone()
        this_month = partitions.Month.of(datetime.now(UTC))
        first = partitions.Month.of(oldest) if oldest else this_month
        last = max(partitions.Month.of(newest), this_month) if newest else this_month
        months = list(partitions.months_between(first, last.next()))
        for month in months:
            partitions.create(cursor, month, identity_index=False)
        cursor.execute(_SEED_TO_TRADES)
        for month in months:
            partitions.create_identity_index(cursor, month)
        cursor.execute(f"DROP TABLE {SEED}")
        cursor.execute(VIEW)
        cursor.execute("ANALYZE streams_trade")


def postgresql_backwards(schema_editor: BaseDatabaseSchemaEditor, seed_model: type[models.Model]) -> None:
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("ALTER VIEW streams_priceupdate RENAME TO streams_priceupdate_lean")
        schema_editor.create_model(seed_model)  # its unique constraint and index come at the end (deferred)
        cursor.execute(_TRADES_TO_SEED)
        cursor.execute("DROP VIEW streams_priceupdate_lean")
        cursor.execute("DROP TABLE streams_trade")  # and its partitions


def plain_forwards(schema_editor: BaseDatabaseSchemaEditor, seed_model: type[models.Model],
                   new_model: type[models.Model]) -> None:
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("DROP INDEX IF EXISTS latest_trades")  # the new table's index has the same name
        schema_editor.alter_db_table(seed_model, "streams_priceupdate", SEED)
        schema_editor.create_model(new_model)
        cursor.execute(_INSTRUMENTS)
        cursor.execute(_SEED_TO_PLAIN)
        cursor.execute(f"DROP TABLE {SEED}")


def plain_backwards(schema_editor: BaseDatabaseSchemaEditor, seed_model: type[models.Model],
                    new_model: type[models.Model]) -> None:
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("DROP INDEX IF EXISTS latest_trades")
        schema_editor.alter_db_table(new_model, "streams_priceupdate", SEED)
        schema_editor.create_model(seed_model)
        cursor.execute(_PLAIN_TO_SEED)
        cursor.execute(f"DROP TABLE {SEED}")


class RelayoutTrades(Operation):
    """The state changes below, with the database work above in place of Django's own (which would
    alter a table that becomes a view)."""

    reversible = True

    def __init__(self, state_operations: list[Operation]) -> None:
        self.state_operations = state_operations

    def state_forwards(self, app_label: str, state: ProjectState) -> None:
        for operation in self.state_operations:
            operation.state_forwards(app_label, state)

    def database_forwards(self, app_label: str, schema_editor: BaseDatabaseSchemaEditor, from_state: ProjectState,
                          to_state: ProjectState) -> None:
        seed = from_state.apps.get_model(app_label, "PriceUpdate")
        new = to_state.apps.get_model(app_label, "PriceUpdate")
        if schema_editor.connection.vendor == "postgresql":
            postgresql_forwards(schema_editor)
        else:
            plain_forwards(schema_editor, seed, new)

    def database_backwards(self, app_label: str, schema_editor: BaseDatabaseSchemaEditor, from_state: ProjectState,
                           to_state: ProjectState) -> None:
        new = from_state.apps.get_model(app_label, "PriceUpdate")
        seed = to_state.apps.get_model(app_label, "PriceUpdate")
        if schema_editor.connection.vendor == "postgresql":
            postgresql_backwards(schema_editor, seed)
        else:
            plain_backwards(schema_editor, seed, new)

    def describe(self) -> str:
        return "Move the trades to the lean layout (PostgreSQL: partitioned streams_trade and a view)"


class Migration(migrations.Migration):

    dependencies = [
        ("streams", "0001_initial"),
    ]

    operations = [
        migrations.CreateModel(
            name="Instrument",
            fields=[
                ("id", models.SmallAutoField(primary_key=True, serialize=False)),
                ("symbol", models.CharField(max_length=20)),
                ("channel", models.CharField(choices=[("trade", "trade"), ("aggTrade", "aggTrade")], max_length=8)),
            ],
            options={
                "ordering": ["symbol", "channel"],
                "constraints": [models.UniqueConstraint(fields=("symbol", "channel"), name="unique_instrument")],
            },
        ),
        RelayoutTrades(state_operations=[
            migrations.CreateModel(
                name="StoredTrade",
                fields=[
                    ("pk", models.CompositePrimaryKey("instrument", "trade_id", blank=True, editable=False,
                                                      primary_key=True, serialize=False)),
                    ("trade_time", models.DateTimeField()),
                    ("trade_id", models.BigIntegerField()),
                    ("first_trade_id", models.BigIntegerField(null=True)),
                    ("last_trade_id", models.BigIntegerField(null=True)),
                    ("event_time", models.DateTimeField(null=True)),
                    ("received_time", models.DateTimeField(null=True)),
                    ("event_after_us", models.IntegerField(null=True)),
                    ("received_after_us", models.IntegerField(null=True)),
                    ("instrument", models.ForeignKey(db_constraint=False,
                                                     on_delete=django.db.models.deletion.DO_NOTHING,
                                                     related_name="+", to="streams.instrument")),
                    ("is_market_maker", models.BooleanField()),
                    ("price", models.DecimalField(decimal_places=8, max_digits=28)),
                    ("volume", models.DecimalField(decimal_places=8, max_digits=28)),
                ],
                options={
                    "db_table": "streams_trade",
                    "required_db_vendor": "postgresql",
                },
            ),
            migrations.AlterModelOptions(name="priceupdate", options={}),
            migrations.RemoveConstraint(model_name="priceupdate", name="unique_trade"),
            migrations.RemoveIndex(model_name="priceupdate", name="latest_trades"),
            migrations.RemoveField(model_name="priceupdate", name="id"),
            migrations.AddField(
                model_name="priceupdate",
                name="key",
                field=models.CharField(default=None, editable=False, max_length=64, primary_key=True, serialize=False,
                                       help_text="symbol:channel:trade id (the exchange's identity of the trade)"),
                preserve_default=False,
            ),
            migrations.AddField(
                model_name="priceupdate",
                name="instrument",
                field=models.ForeignKey(db_constraint=False, default=None,
                                        on_delete=django.db.models.deletion.DO_NOTHING, related_name="+",
                                        to="streams.instrument"),
                preserve_default=False,
            ),
            migrations.AddField(
                model_name="priceupdate",
                name="received_time",
                field=models.DateTimeField(blank=True, null=True,
                                           help_text="when this service received it; empty for REST and archive trades"),
            ),
            migrations.AddIndex(
                model_name="priceupdate",
                index=models.Index(fields=["instrument", "-trade_time"], name="latest_trades"),
            ),
            migrations.AddConstraint(
                model_name="priceupdate",
                constraint=models.UniqueConstraint(fields=("instrument", "trade_id"), name="trade_identity"),
            ),
        ]),
    ]
