#!/usr/bin/env bash
# Times the README's first command (install, train, export with the parity gate, the 22 s serve
# demo) from a clean clone, a fresh .venv and a cold data cache. Every output line is prefixed
# with the seconds since the start, so install, training, export and the demo can be told
# apart (results/default/command1.log is its run at a34b3a5, on a 2-vCPU Intel Xeon VM).
#
#   bash results/default/time_command1.sh [CLONE_DIR]   # default /tmp/avqa-edge-command1
set -u
repo=$(cd "$(dirname "$0")/../.." && pwd)
dest=${1:-/tmp/avqa-edge-command1}
rm -rf "$dest" && git clone -q "$repo" "$dest" && cd "$dest" || exit 1
git log -1 --format='commit %h %s' | cut -c1-100
export XDG_CACHE_HOME="$dest/.xdgcache"
# the README's first ```bash block, its continuation lines joined
CMD=$(awk '/^```bash/ {on = 1; next} on && /^```/ {exit} on' README.md | sed 's/\\$//' | tr '\n' ' ')
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
