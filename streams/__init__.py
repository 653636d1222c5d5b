"""The exchange side: the Binance protocol and client, the fake exchange, and (later) storage."""
