"""A fake Binance exchange (WebSocket streams + REST market data) for tests, demos and benchmarks."""
