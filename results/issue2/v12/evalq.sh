#!/bin/bash
cd /work/main && . .venv/bin/activate
core=$1; shift
for job in "$@"; do
  name=${job%%:*}; args=${job#*:}
  echo "$(date +%T) start $name" >> runs/v12/queue.log
  s=$(date +%s)
  OMP_NUM_THREADS=1 taskset -c $core avqa-edge eval $args --json results/issue2/v12/eval_$name.json > runs/v12/eval_$name.log 2>&1
  echo "$(date +%T) end eval $name rc=$? $(( $(date +%s) - s )) s" >> runs/v12/queue.log
done
