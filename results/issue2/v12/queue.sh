#!/bin/bash
# worker: runs its list of jobs one after another at one thread on core $1
cd /work/main && . .venv/bin/activate
core=$1; shift
for job in "$@"; do
  name=${job%%:*}; args=${job#*:}
  echo "$(date +%T) start $name" >> runs/v12/queue.log
  s=$(date +%s)
  OMP_NUM_THREADS=1 taskset -c $core avqa-edge train --out runs/v12/$name $args > runs/v12/$name.log 2>&1
  echo "$(date +%T) end $name rc=$? $(( $(date +%s) - s )) s" >> runs/v12/queue.log
done
