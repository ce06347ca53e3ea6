#!/usr/bin/env bash
# README command 1 from a clean clone, fresh venv, cold data cache, timed; every output line
# is prefixed with the seconds since the command started (so install, training, export and the
# demo can be told apart).
set -u
rm -rf /tmp/c1 && git clone -q /work/main /tmp/c1 && cd /tmp/c1
git log -1 --format='commit %h %s' | cut -c1-100
export XDG_CACHE_HOME=/tmp/c1/.xdgcache
CMD=$(sed -n '/^# 1\./{n;p}' README.md)
echo "CMD: $CMD"
start=$(date +%s)
bash -c "$CMD" 2>&1 | python3 -u -c '
import sys, time
t0 = time.time()
for line in sys.stdin:
    print(f"{time.time() - t0:7.1f} {line.rstrip()}")
'
rc=${PIPESTATUS[0]}
end=$(date +%s)
echo "rc=$rc total_s=$((end-start))"
