#!/usr/bin/env bash
# The prepared GPU check (docs/performance.md#gpu-check): on a machine with an NVIDIA GPU, a fresh virtual
# environment with the CUDA build of torch, `spectrosynth doctor --json`, the tests marked `cuda`, and the
# speed, batch and end-to-end benchmarks on CUDA (bench/gpu_bench.py, on a random checkpoint in the published
# base sizes), within GPU_CHECK_BUDGET seconds (480) in all. Without a GPU it says so, skips the CUDA install,
# runs the cuda tests (which skip) and quick CPU versions of the benchmarks on a tiny model.
#
#   bench/gpu_check.sh                         # results in build/gpu-check/results-<date>/
#   bench/gpu_check.sh --reuse-env .venv       # no install: use this environment (GPU_CHECK_VENV=.venv)
#
# Every figure and log goes into one folder: summary.md (each step's status and time), doctor.json and
# doctor.txt, pytest-cuda.xml (junit) and pytest-cuda.log, speed/batch/e2e .json and .csv, a log per step.
# A failing step is recorded and the next one runs; the exit code is 1 if any step failed.
#
# Variables (and options): GPU_CHECK_RESULTS (--results DIR), GPU_CHECK_VENV (--reuse-env DIR: an existing
# environment; no install), GPU_CHECK_NEW_VENV (the fresh environment, build/gpu-check/venv),
# GPU_CHECK_INSTALL=minimal|full (minimal: torch, spectrosynth, pytest and onnx; full: `make install
# TORCH=cuda`, every extra and test reference), GPU_CHECK_MODEL (the base checkpoint, written once:
# build/gpu-check/base-model), GPU_CHECK_BUDGET (seconds, 480), GPU_CHECK_NO_GPU=1 (--no-gpu: act as on a
# machine without one), TORCH_INDEX (as for `make install`: the index torch comes from), PYTHON (the
# interpreter of the fresh environment: python3).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

RESULTS=${GPU_CHECK_RESULTS:-build/gpu-check/results-$(date +%Y%m%d-%H%M%S)}
REUSE_VENV=${GPU_CHECK_VENV:-}
NEW_VENV=${GPU_CHECK_NEW_VENV:-build/gpu-check/venv}
INSTALL=${GPU_CHECK_INSTALL:-minimal}
MODEL=${GPU_CHECK_MODEL:-build/gpu-check/base-model}
BUDGET=${GPU_CHECK_BUDGET:-480}
NO_GPU=${GPU_CHECK_NO_GPU:-0}
TORCH_VERSION=2.13.0
PYTHON=${PYTHON:-python3} # makes the fresh environment

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

while (($#)); do
  case $1 in
    --reuse-env) REUSE_VENV=${2:?--reuse-env needs a folder}; shift 2 ;;
    --results) RESULTS=${2:?--results needs a folder}; shift 2 ;;
    --model) MODEL=${2:?--model needs a folder}; shift 2 ;;
    --budget) BUDGET=${2:?--budget needs seconds}; shift 2 ;;
    --no-gpu) NO_GPU=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case $INSTALL in minimal | full) ;; *) echo "gpu_check.sh: GPU_CHECK_INSTALL is minimal or full" >&2; exit 2 ;; esac

mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
STARTED=$(date +%s)
DEADLINE=$((STARTED + BUDGET))
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
# Converted weights (spectrosynth.converted) go to the scratch folder, never the user's cache.
export SPECTROSYNTH_CACHE=$SCRATCH/spectrosynth-cache

say() { echo "gpu_check: $*"; }

# ---------------------------------------------------------------------------------------------------------
# Steps and the summary

NAMES=() STATUSES=() TIMES=() NOTES=()
FAILED=0

record() { # NAME STATUS SECONDS NOTE
  NAMES+=("$1") STATUSES+=("$2") TIMES+=("$3") NOTES+=("$4")
  if [[ $2 == failed || $2 == "timed out" ]]; then FAILED=1; fi
  say "$1: $2 (${3} s)${4:+ - $4}"
  write_summary
}

now_ms() { date +%s%3N; }

# run_step NAME LIMIT_S STDOUT_FILE LOG_FILE COMMAND...: COMMAND under `timeout`, its stdout into STDOUT_FILE
# and stderr into LOG_FILE (the same file for both when they are equal), limited to what is left of the budget.
run_step() {
  local name=$1 limit=$2 out=$3 log=$4 left began rc seconds
  shift 4
  left=$((DEADLINE - $(date +%s)))
  if ((left < 10)); then
    record "$name" failed 0 "not run: no time left of the ${BUDGET} s budget"
    return 0
  fi
  if ((limit > left)); then limit=$left; fi
  say "$name (at most ${limit} s) ..."
  began=$(now_ms)
  set +e
  if [[ $out == "$log" ]]; then
    timeout --kill-after=10 "$limit" "$@" >"$out" 2>&1
  else
    timeout --kill-after=10 "$limit" "$@" >"$out" 2>"$log"
  fi
  rc=$?
  set -e
  seconds=$(awk -v ms=$(($(now_ms) - began)) 'BEGIN { printf "%.1f", ms / 1000 }')
  if ((rc == 0)); then
    record "$name" ok "$seconds" "${STEP_NOTE:-}"
  elif ((rc == 124 || rc == 137)); then
    record "$name" "timed out" "$seconds" "killed after ${limit} s; see $(basename "$log")"
  else
    record "$name" failed "$seconds" "exit code $rc; see $(basename "$log")"
  fi
  STEP_NOTE=
}

skip_step() { record "$1" skipped 0 "$2"; }

write_summary() {
  {
    echo "# GPU check, $(date -d "@$STARTED" '+%Y-%m-%d %H:%M:%S %Z' 2>/dev/null || date)"
    echo
    echo "- machine: $(hostname), $(uname -srm), $(nproc 2>/dev/null || echo '?') CPUs"
    echo "- GPU: ${GPU_LINE:-none (${why:-?}); CUDA install and steps skipped, benchmarks quick on the CPU}"
    echo "- environment: ${ENV_NOTE:-?}"
    echo "- mode: ${MODE:-?}; budget ${BUDGET} s, $(($(date +%s) - STARTED)) s used"
    echo "- results: $RESULTS"
    echo
    echo "| step | status | seconds | notes |"
    echo "|---|---|---|---|"
    local i
    for i in "${!NAMES[@]}"; do
      echo "| ${NAMES[$i]} | ${STATUSES[$i]} | ${TIMES[$i]} | ${NOTES[$i]//|/\\|} |"
    done
    echo
    if ((FAILED)); then echo "Result: **some steps failed**."; else echo "Result: every step that ran passed."; fi
  } >"$RESULTS/summary.md"
}

# ---------------------------------------------------------------------------------------------------------
# 1. Is there a GPU?

GPU_LINE='' why=''
if ((NO_GPU == 0)) && command -v nvidia-smi >/dev/null && nvidia-smi -L >"$RESULTS/nvidia-smi.txt" 2>&1 \
  && grep -q '^GPU ' "$RESULTS/nvidia-smi.txt"; then
  GPU_LINE=$(grep -m1 '^GPU ' "$RESULTS/nvidia-smi.txt")
  nvidia-smi >>"$RESULTS/nvidia-smi.txt" 2>&1 || true
  MODE="CUDA"
  say "GPU found: $GPU_LINE"
else
  MODE="no GPU: quick CPU benchmarks on a tiny model"
  why="nvidia-smi lists none"
  if ((NO_GPU)); then why="--no-gpu"; fi
  say "no NVIDIA GPU here ($why): the CUDA install is skipped and the benchmarks run quick on the CPU"
fi
if [[ -n $GPU_LINE ]]; then record gpu ok 0 "$GPU_LINE"; else record gpu skipped 0 "no NVIDIA GPU"; fi

# ---------------------------------------------------------------------------------------------------------
# 2. The environment

if [[ -n $REUSE_VENV ]]; then
  VENV=$REUSE_VENV
  ENV_NOTE="reused $VENV (--reuse-env; nothing installed)"
  skip_step install "reusing $VENV"
elif [[ -z $GPU_LINE ]]; then
  VENV=.venv
  ENV_NOTE="reused .venv (no GPU, so no CUDA install)"
  if [[ -x .venv/bin/python ]]; then
    skip_step install "no GPU: reusing .venv instead of installing the CUDA build"
  else
    run_step install 420 "$RESULTS/install.log" "$RESULTS/install.log" make install TORCH=cpu VENV=.venv
  fi
else
  VENV=$NEW_VENV
  ENV_NOTE="fresh $VENV, CUDA build of torch ($INSTALL install)"
  mkdir -p "$(dirname "$VENV")"
  if [[ $INSTALL == full ]]; then
    run_step install 300 "$RESULTS/install.log" "$RESULTS/install.log" \
      make install TORCH=cuda "VENV=$VENV" "PYTHON=$PYTHON"
  else
    # What `make install TORCH=cuda` does for torch, then spectrosynth with only what the steps below need.
    index=()
    if [[ -n ${TORCH_INDEX:-} ]]; then index=(--index-url "$TORCH_INDEX"); fi
    # shellcheck disable=SC2016 # the inner script's own arguments, expanded there
    run_step install 300 "$RESULTS/install.log" "$RESULTS/install.log" bash -c '
      set -euxo pipefail
      "$3" -m venv "$1"
      "$1/bin/python" -m pip install --upgrade pip
      "$1/bin/python" -m pip install "torch==$2" "${@:4}"
      "$1/bin/python" -m pip install -e . pytest onnx
    ' install "$VENV" "$TORCH_VERSION" "$PYTHON" ${index[@]+"${index[@]}"}
  fi
fi
PY=$VENV/bin/python
write_summary

if [[ -n $GPU_LINE ]]; then
  STEP_NOTE="torch sees the GPU"
  run_step torch-cuda 60 "$RESULTS/torch-cuda.log" "$RESULTS/torch-cuda.log" "$PY" -c '
import torch
print("torch", torch.__version__, "CUDA", torch.version.cuda)
assert torch.cuda.is_available(), "torch.cuda.is_available() is False: a CPU build, or the driver is too old"
print(torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
'
fi

# ---------------------------------------------------------------------------------------------------------
# 3. doctor, the cuda tests

run_step doctor 60 "$RESULTS/doctor.json" "$RESULTS/doctor.log" "$PY" -m spectrosynth doctor --json
"$PY" -m spectrosynth doctor >"$RESULTS/doctor.txt" 2>>"$RESULTS/doctor.log" || true

run_step cuda-tests 180 "$RESULTS/pytest-cuda.log" "$RESULTS/pytest-cuda.log" \
  "$PY" -m pytest -m cuda tests/test_cuda.py -p no:cacheprovider -rs -v --junitxml="$RESULTS/pytest-cuda.xml"
if [[ -f $RESULTS/pytest-cuda.xml ]]; then
  counts=$("$PY" -c '
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suite = root if root.tag == "testsuite" else root.find("testsuite")
tests, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
print(f"{tests} tests: {tests - skipped - failed} passed, {failed} failed, {skipped} skipped")
' "$RESULTS/pytest-cuda.xml" || echo "junit xml unreadable")
  NOTES[${#NOTES[@]} - 1]="${NOTES[${#NOTES[@]} - 1]:+${NOTES[${#NOTES[@]} - 1]}; }$counts"
  write_summary
fi

# ---------------------------------------------------------------------------------------------------------
# 4. Benchmarks: on CUDA the published base sizes, without a GPU a tiny model and a few steps

if [[ -n $GPU_LINE ]]; then
  DEVICE=cuda
  if [[ -f $MODEL/.complete ]]; then
    skip_step checkpoint "reusing $MODEL"
  else
    rm -rf "$MODEL.part"
    STEP_NOTE="random base-size checkpoint written to $MODEL"
    # shellcheck disable=SC2016 # the inner script's own arguments, expanded there
    run_step checkpoint 150 "$RESULTS/checkpoint.log" "$RESULTS/checkpoint.log" bash -c '
      "$1" -m spectrosynth.testing --size base --format safetensors "$2.part" && touch "$2.part/.complete" \
        && rm -rf "$2" && mv "$2.part" "$2"' checkpoint "$PY" "$MODEL"
  fi
  BENCH_MODEL=$MODEL
  SPEED=(--segments 4 --steps 20 --precisions "float32,bfloat16,float16")
  BATCH=(--segments 2 --steps 20 --batch-sizes "1,2,4,8")
  E2E=(--seconds 10.24 --steps 20 --repeat 2)
else
  DEVICE=cpu
  BENCH_MODEL=$SCRATCH/tiny-model
  STEP_NOTE="tiny random checkpoint (no GPU)"
  run_step checkpoint 60 "$RESULTS/checkpoint.log" "$RESULTS/checkpoint.log" \
    "$PY" -m spectrosynth.testing "$BENCH_MODEL"
  SPEED=(--segments 2 --steps 2 --precisions float32)
  BATCH=(--segments 1 --steps 2 --batch-sizes "1,2")
  E2E=(--seconds 5.12 --steps 2 --repeat 1 --dtype float32)
fi

if [[ -f $BENCH_MODEL/model_index.json ]]; then
  common=(--checkpoint "$BENCH_MODEL" --device "$DEVICE" --out "$RESULTS")
  run_step speed 120 "$RESULTS/speed.log" "$RESULTS/speed.log" "$PY" bench/gpu_bench.py speed "${common[@]}" "${SPEED[@]}"
  run_step batch 120 "$RESULTS/batch.log" "$RESULTS/batch.log" "$PY" bench/gpu_bench.py batch "${common[@]}" "${BATCH[@]}"
  run_step e2e 90 "$RESULTS/e2e.log" "$RESULTS/e2e.log" "$PY" bench/gpu_bench.py e2e "${common[@]}" "${E2E[@]}"
else
  for name in speed batch e2e; do record "$name" failed 0 "not run: no checkpoint at $BENCH_MODEL"; done
fi

write_summary
if "$PY" bench/gpu_bench.py table --out "$RESULTS" >"$SCRATCH/figures.md" 2>"$SCRATCH/figures.log"; then
  { echo; echo "## Figures"; echo; cat "$SCRATCH/figures.md"; } >>"$RESULTS/summary.md"
fi
say "summary: $RESULTS/summary.md"
exit "$FAILED"
