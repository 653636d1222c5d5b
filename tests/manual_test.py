#!/usr/bin/env python
"""Manual check against a real (or fake) exchange; not part of the automated suite.

    .venv/bin/python tests/manual_test.py --client=standalone --symbol btcusdt --channel trade --limit 5
    .venv/bin/python tests/manual_test.py --client=django --symbol ethusdt --channel aggTrade --limit 20
    .venv/bin/python tests/manual_test.py --client=django --url ws://127.0.0.1:9443 --rest-url http://127.0.0.1:9444

`--client=standalone` runs `python -m streams.standalone`; `--client=django` runs
`manage.py binance_websocket_client` (it stores into DATABASE_URL, SQLite by default). `--url` and
`--rest-url` override BINANCE_WS_URL and BINANCE_REST_URL. Exit code: the client's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--client", choices=("django", "standalone"), default="standalone")
    parser.add_argument("--symbol", default="btcusdt")
    parser.add_argument("--channel", default="trade")
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--url", help="WebSocket base URL (default: BINANCE_WS_URL or the real exchange)")
    parser.add_argument("--rest-url", help="REST base URL (default: BINANCE_REST_URL or the real exchange)")
    args = parser.parse_args()
    env = dict(os.environ)
    env.setdefault("DEBUG", "1")
    if args.url:
        env["BINANCE_WS_URL"] = args.url
    if args.rest_url:
        env["BINANCE_REST_URL"] = args.rest_url
    if args.client == "standalone":
        command = [sys.executable, "-m", "streams.standalone", args.symbol, args.channel, str(args.limit)]
    else:
        command = [sys.executable, "manage.py", "binance_websocket_client", "--symbol", args.symbol,
                   "--channel", args.channel, "--limit", str(args.limit)]
    print("running:", " ".join(command), file=sys.stderr)
    return subprocess.call(command, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
