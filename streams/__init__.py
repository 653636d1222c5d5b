"""The data side: the Binance core (binance/), the fake exchange (fake/), and the stored trades: storage,
partitions, queries, the archive's format, exports and the one-off collector."""
