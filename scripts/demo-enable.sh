#!/bin/sh
# make demo: enable the given symbols once the fake exchange answers, then exit. A one-shot: the process
# runner does not restart a process that exits 0, and restarts this one (with backoff) if a symbol failed.
status=0
for symbol in "$@"; do
  enabled=no
  for _ in $(seq 1 60); do
    .venv/bin/python manage.py streams enable "$symbol" && { enabled=yes; break; }
    sleep 1
  done
  [ "$enabled" = yes ] || { echo "could not enable $symbol: is the fake exchange up?" >&2; status=1; }
done
.venv/bin/python manage.py streams list
exit $status
