#!/bin/sh
# make demo: enable the given symbols once the fake exchange answers, then stay up (honcho stops every
# process when one exits).
for symbol in "$@"; do
  for _ in $(seq 1 60); do
    .venv/bin/python manage.py streams enable "$symbol" && break
    sleep 1
  done
done
.venv/bin/python manage.py streams list
exec sleep 2147483647
