#!/usr/bin/env bash
# The parity table (results/export/parity.md / .json): PyTorch against ONNX Runtime, FP32 and
# FP16 graphs, per component and as answer agreement on the bundle's 375 calibration questions.
# Run from a clean clone after the README's install line. Stages: train (about 12 min on 2 CPU
# cores; skipped when runs/default exists), export with the parity gate (about 1.2 min).
# There is no cheaper stage: the gate needs the PyTorch run and the bundle.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -f runs/default/model.safetensors ] || avqa-edge train --out runs/default
avqa-edge export runs/default --out bundles/default --overwrite
cp bundles/default/parity.md bundles/default/parity.json results/export/
