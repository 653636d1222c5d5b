"""A process for the runner's tests: writes its pid into a file, then sleeps, exits, or ignores SIGTERM.

`python tests/project/launcher/child.py PID_FILE [--exit CODE] [--ignore-term]`
"""

from __future__ import annotations

import argparse
import os
import signal
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("pid_file")
    parser.add_argument("--exit", type=int, default=None, help="exit with this code at once")
    parser.add_argument("--ignore-term", action="store_true", help="ignore SIGTERM (the runner must SIGKILL)")
    args = parser.parse_args()
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(f"{args.pid_file}.tmp", "w") as out:
        out.write(str(os.getpid()))
    os.replace(f"{args.pid_file}.tmp", args.pid_file)  # readers never see half a pid
    print(f"child {os.getpid()} up", flush=True)
    if args.exit is not None:
        raise SystemExit(args.exit)
    time.sleep(600)


if __name__ == "__main__":
    main()
