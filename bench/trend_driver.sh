#!/usr/bin/env bash
# Sweeps each doubling checkpoint of the measuring model's run as it appears (bench/quality_sweep.py, the
# trend settings, EMA weights), on one core; run it beside bench/measuring_model.py. Settings measured
# before are skipped, so running it again resumes.
#   bench/trend_driver.sh 250 500 1000 2000 4000 8000 16000 32000
set -u
cd "$(dirname "$0")/.."
for step in "$@"; do
  until [ -f "build/measure/run/checkpoints/step-$(printf %08d "$step")/state.json" ]; do sleep 60; done
  OMP_NUM_THREADS=1 .venv/bin/python bench/quality_sweep.py --step "$step" --settings trend
done
