#!/usr/bin/env bash
# The latency table (results/export/bench_threads1.txt): PyTorch eager against ONNX Runtime at
# one thread, batch 1, each backend in its own process. Run from a clean clone after the README's
# install line, on a quiet machine (other jobs change the absolute figures; the speed-ups are
# ratios measured in the same run). Stages: train (about 12 min on 2 CPU cores; skipped when
# runs/default exists), export (about 1.2 min; skipped when bundles/default exists), bench
# (about 35 s).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -f runs/default/model.safetensors ] || avqa-edge train --out runs/default
[ -f bundles/default/manifest.json ] || avqa-edge export runs/default --out bundles/default --overwrite
avqa-edge bench bundles/default --threads 1 --json bundles/default/bench_threads1.json | tee results/export/bench_threads1.txt
