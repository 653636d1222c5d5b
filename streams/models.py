"""The stored trades."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.db import models

from streams.binance.protocol import AGG_TRADE, TRADE, Trade

# Binance quotes every spot price and quantity with 8 decimals; 20 integer digits cover the largest.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)
PRICE_DIGITS = 28
PRICE_DECIMALS = 8


class Channel(models.TextChoices):
    TRADE = TRADE, "trade"
    AGG_TRADE = AGG_TRADE, "aggTrade"


class PriceUpdate(models.Model):
    """One trade (or aggregate trade) as the exchange reported it; unique on the exchange's identity."""

    ticker_symbol = models.CharField(max_length=20)
    channel = models.CharField(max_length=8, choices=Channel.choices, default=Channel.TRADE)
    trade_id = models.BigIntegerField(help_text="trade id (t), or aggregate trade id (a) for aggTrade")
    price = models.DecimalField(max_digits=PRICE_DIGITS, decimal_places=PRICE_DECIMALS)
    volume = models.DecimalField(max_digits=PRICE_DIGITS, decimal_places=PRICE_DECIMALS)
    trade_time = models.DateTimeField()
    event_time = models.DateTimeField(help_text="the stream's event time; the trade time for REST backfills")
    is_market_maker = models.BooleanField(help_text="the buyer was the maker (m)")
    first_trade_id = models.BigIntegerField(null=True, blank=True, help_text="aggTrade only (f)")
    last_trade_id = models.BigIntegerField(null=True, blank=True, help_text="aggTrade only (l)")

    class Meta:
        constraints = [
            # The exchange's identity of a trade; storage inserts with ON CONFLICT DO NOTHING on it.
            # Its index also serves "holes in the ids of a symbol" (an ordered scan of trade_id).
            models.UniqueConstraint(fields=["ticker_symbol", "channel", "trade_id"], name="unique_trade"),
        ]
        indexes = [
            # "The latest trades of a symbol".
            models.Index(fields=["ticker_symbol", "-trade_time"], name="latest_trades"),
        ]
        ordering = ["-trade_time"]

    def as_trade(self) -> Trade:
        """The stored row as the protocol's Trade (times back in exchange milliseconds)."""
        return Trade(self.ticker_symbol, self.channel, self.trade_id, str(self.price), str(self.volume),
                     (self.trade_time - _EPOCH) // _MILLISECOND, (self.event_time - _EPOCH) // _MILLISECOND,
                     self.is_market_maker, self.first_trade_id, self.last_trade_id)

    def __str__(self) -> str:
        return f"{self.ticker_symbol} {self.channel} #{self.trade_id} {self.volume} @ {self.price}"
