#!/usr/bin/env bash
# The measuring model on a GPU (docs/quality.md#on-a-gpu): train the run in build/measure/run on from its
# latest checkpoint for a fixed time, then sweep the result on both song sets, everything into one results
# folder, with the new checkpoint cut into pieces of at most 16 MiB; then the CPU work resumes from it
# (`bench/gpu_measure.sh --unpack RESULTS`). Ten minutes of a GPU are days of this project's 2-core CPU.
#
#   bench/gpu_measure.sh                           # results in build/gpu-measure/results-<date>/
#   bench/gpu_measure.sh --budget 300 --results DIR
#   bench/gpu_measure.sh --unpack DIR              # here: put DIR's checkpoint back into build/measure/run
#
# Steps, each under `timeout` within GPU_MEASURE_BUDGET seconds (480) in all: (1) `spectrosynth train
# --resume --device auto` until --reserve (150) seconds before the end (SIGTERM then makes it checkpoint and stop at once);
# (2) the latest checkpoint's weight average swept with the core settings (the recipe, the default, SDE 20)
# on both song sets; (3) the checkpoint (weights, average, optimizer state, state.json, run.json,
# metrics.csv) as checkpoint.tar cut into 16 MiB pieces, the sweep's results, the loss plot, summary.md.
# Without a GPU it runs the same steps on the CPU (what the tests do, with a tiny run).
#
# Variables (and options): GPU_MEASURE_RESULTS (--results DIR), GPU_MEASURE_BUDGET (--budget SECONDS),
# GPU_MEASURE_RUN (--run DIR: build/measure/run), GPU_MEASURE_DATA (--data DIR: build/measure/data),
# GPU_MEASURE_SONGS (--songs N: songs per set in the sweep, 6), GPU_MEASURE_MIDI (--midi DIR: the dataset's
# MIDI files, bench/data/nottingham), GPU_MEASURE_SEGMENTS (--segments N: per song, 2), GPU_MEASURE_RESERVE
# (--reserve SECONDS: kept for the sweep and the pieces, 150), PYTHON (.venv/bin/python, else python3).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

RESULTS=${GPU_MEASURE_RESULTS:-build/gpu-measure/results-$(date +%Y%m%d-%H%M%S)}
BUDGET=${GPU_MEASURE_BUDGET:-480}
RUN=${GPU_MEASURE_RUN:-build/measure/run}
DATA=${GPU_MEASURE_DATA:-build/measure/data}
SONGS=${GPU_MEASURE_SONGS:-6}
MIDI=${GPU_MEASURE_MIDI:-bench/data/nottingham}
SEGMENTS=${GPU_MEASURE_SEGMENTS:-2}
RESERVE=${GPU_MEASURE_RESERVE:-150}
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
UNPACK=

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

while (($#)); do
  case $1 in
    --results) RESULTS=${2:?--results needs a folder}; shift 2 ;;
    --budget) BUDGET=${2:?--budget needs seconds}; shift 2 ;;
    --run) RUN=${2:?--run needs a folder}; shift 2 ;;
    --data) DATA=${2:?--data needs a folder}; shift 2 ;;
    --songs) SONGS=${2:?--songs needs a number}; shift 2 ;;
    --midi) MIDI=${2:?--midi needs a folder}; shift 2 ;;
    --segments) SEGMENTS=${2:?--segments needs a number}; shift 2 ;;
    --reserve) RESERVE=${2:?--reserve needs seconds}; shift 2 ;;
    --unpack) UNPACK=${2:?--unpack needs a results folder}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "gpu_measure.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [ -n "$UNPACK" ]; then
  # The pieces back into one archive, checked against its recorded checksum, then into the run folder.
  [ -f "$UNPACK/checkpoint.sha256" ] || { echo "gpu_measure.sh: $UNPACK has no checkpoint.sha256" >&2; exit 1; }
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  cat "$UNPACK"/checkpoint.tar.part-* > "$tmp/checkpoint.tar"
  cp "$UNPACK/checkpoint.sha256" "$tmp/"
  (cd "$tmp" && sha256sum -c --quiet checkpoint.sha256) \
    || { echo "gpu_measure.sh: the pieces in $UNPACK do not make the checkpoint they were cut from" >&2; exit 1; }
  mkdir -p "$RUN/checkpoints"
  tar -xf "$tmp/checkpoint.tar" -C "$RUN"
  echo "gpu_measure.sh: $(tar -tf "$tmp/checkpoint.tar" | grep -m1 -o 'step-[0-9]*') is in $RUN; resume there"
  exit 0
fi

[ -f "$RUN/run.json" ] || { echo "gpu_measure.sh: $RUN holds no training run (run bench/measuring_model.py first)" >&2; exit 1; }
[ -d "$DATA" ] || { echo "gpu_measure.sh: no dataset at $DATA" >&2; exit 1; }
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
STARTED=$(date +%s)
DEADLINE=$((STARTED + BUDGET))
export PYTHONUNBUFFERED=1 SPECTROSYNTH_CACHE=${SPECTROSYNTH_CACHE:-$RESULTS/.cache}
SUMMARY=$RESULTS/summary.md
echo "# gpu_measure.sh $(date -u +%FT%TZ)" > "$SUMMARY"
failed=0
step() { # NAME SECONDS COMMAND...: run under timeout, log, and record its status and time
  local name=$1 limit=$2 began=$(date +%s) status=0
  shift 2
  timeout --signal=TERM --kill-after=30 "$limit" "$@" > "$RESULTS/$name.log" 2>&1 || status=$?
  echo "- $name: exit $status, $(($(date +%s) - began)) s" >> "$SUMMARY"
  if [ "$status" -ne 0 ] && ! { [ "$name" = train ] && [ "$status" -eq 130 ] || [ "$status" -eq 124 ]; }; then failed=1; fi
  return 0
}
"$PY" - > "$RESULTS/device.txt" 2>&1 <<'EOF' || true
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available())
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(0))
EOF

# (1) Train on until RESERVE seconds before the end: SIGTERM at the limit makes the run checkpoint and stop.
left=$((DEADLINE - $(date +%s) - RESERVE))
before=$("$PY" -c "import json,sys,pathlib; c=sorted(pathlib.Path('$RUN/checkpoints').glob('step-*')); print(json.loads((c[-1]/'state.json').read_text())['step'] if c else 0)")
if [ "$left" -gt 10 ]; then
  step train "$left" "$PY" -m spectrosynth train "$DATA" "$RUN" --resume --device auto --max-steps 10000000 --quiet
fi
last=$(ls -d "$RUN"/checkpoints/step-* | tail -n 1)
after=$(basename "$last" | sed 's/step-0*//')
echo "- steps: from $before to $after" >> "$SUMMARY"

# (2) The sweep's core settings on the new checkpoint (EMA weights), on the device.
left=$((DEADLINE - $(date +%s) - 30))
if [ "$left" -gt 10 ]; then
  step sweep "$left" "$PY" bench/quality_sweep.py --run "$RUN" --step "$after" --settings core --songs "$SONGS" \
    --segments "$SEGMENTS" --data "$DATA" --midi "$MIDI" --device auto --out "$RESULTS/quality_trend.json" --plot "$RESULTS/quality-trend.png"
fi

# (3) The checkpoint in pieces, and the run's log.
tar -cf "$RESULTS/checkpoint.tar" -C "$RUN" run.json metrics.csv "checkpoints/$(basename "$last")"
(cd "$RESULTS" && sha256sum checkpoint.tar > checkpoint.sha256 && split -b 16M -d checkpoint.tar checkpoint.tar.part- && rm checkpoint.tar)
cp "$RUN/metrics.csv" "$RESULTS/metrics.csv"
echo "- pieces: $(ls "$RESULTS"/checkpoint.tar.part-* | wc -l) of at most 16 MiB; total $(($(date +%s) - STARTED)) s of $BUDGET" >> "$SUMMARY"
cat "$SUMMARY"
exit "$failed"
