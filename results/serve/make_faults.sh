#!/usr/bin/env bash
# The fault table (results/serve/faults.txt / .json): every failure kind injected into the demo
# source on a simulated clock, 4 trials per kind, faults of 3 s; thresholds fitted on the even
# calibration clips, replayed on the odd ones; false alarms over 600 s of healthy replay.
# Detection does not depend on the model's weights, only on the calibration clips, which every
# bundle of the built-in benchmark shares. Stages: train (about 12 min on 2 CPU cores; skipped
# when runs/default exists), export (about 1.2 min; skipped when bundles/default exists),
# faults (seconds).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -f runs/default/model.safetensors ] || avqa-edge train --out runs/default
[ -f bundles/default/manifest.json ] || avqa-edge export runs/default --out bundles/default --overwrite
avqa-edge faults bundles/default --json results/serve/faults.json | tee results/serve/faults.txt
