# The README's commands. `make install` builds .venv; `make test` runs every test in it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# Which PyTorch build `make install` puts in: TORCH=cpu, cuda or auto (the default: cuda when `nvidia-smi -L`
# lists a GPU, else cpu). Linux cpu: PyTorch's CPU wheel index, because PyPI's Linux torch is the CUDA build
# (several GB of CUDA libraries). Linux cuda: PyPI's own wheel, the CUDA 12 build that `pip install
# spectrosynth` gets too; its CUDA libraries come as pip packages, so only an NVIDIA driver is needed. macOS:
# always PyPI's wheel (CPU and Apple's MPS; there is no CUDA build). docs/install.md has the details.
# TORCH_INDEX=URL installs torch from that index instead (e.g. https://download.pytorch.org/whl/cu126 for an
# older driver); TORCH_INDEX= (empty) installs plain `pip install torch==$(TORCH_VERSION)` from pip's own
# sources. When pip is configured with its own package sources (an index-url other than PyPI, an
# extra-index-url or find-links, in pip's config files or PIP_* variables: a mirror or a wheel folder), no
# index is added: the machine's sources decide, as they do for every other package.
TORCH ?= auto
TORCH_VERSION := 2.13.0
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu

# Evaluated once, and only by `make install` (GNU make: a variable that replaces itself on first use).
UNAME = $(eval UNAME := $$(shell uname -s))$(UNAME)
GPU = $(eval GPU := $$(shell nvidia-smi -L 2>/dev/null | grep -m1 '^GPU '))$(GPU)
PIP_SOURCES = $(eval PIP_SOURCES := $$(sort $$(if $$(filter-out https://pypi.org/simple https://pypi.org/simple/,$$(PIP_INDEX_URL)),PIP_INDEX_URL) \
  $$(if $$(PIP_EXTRA_INDEX_URL),PIP_EXTRA_INDEX_URL) $$(if $$(PIP_FIND_LINKS),PIP_FIND_LINKS) \
  $$(shell { $$(PYTHON) -m pip config list || pip3 config list; } 2>/dev/null \
  | grep -E '^[^=]*[.](index-url|extra-index-url|find-links)=' \
  | grep -vE "[.]index-url='https://pypi[.]org/simple/?'$$$$" | sed -E 's/=.*//; s/^:env:[.]/env /')))$(PIP_SOURCES)

torch_build = $(if $(filter Darwin,$(UNAME)),macos,$(if $(filter auto,$(TORCH)),$(if $(GPU),cuda,cpu),$(TORCH)))
ifeq ($(origin TORCH_INDEX),undefined)
torch_index = $(if $(filter cpu,$(torch_build)),$(if $(PIP_SOURCES),,$(TORCH_CPU_INDEX)))
torch_why = $(if $(filter cpu,$(torch_build)),$(if $(PIP_SOURCES),this machine's pip sources ($(PIP_SOURCES))$(comma) \
  not PyTorch's CPU index (TORCH_INDEX=$(TORCH_CPU_INDEX) forces it),PyTorch's CPU wheel index),pip's sources (PyPI \
  unless configured otherwise))
else
torch_index = $(TORCH_INDEX)
torch_why = $(if $(TORCH_INDEX),TORCH_INDEX=$(TORCH_INDEX),pip's sources (TORCH_INDEX is empty))
endif
torch_what = $(if $(filter macos,$(torch_build)),macOS: PyPI's wheel (CPU and MPS),$(torch_build) build)
torch_auto = $(if $(filter auto,$(TORCH)),$(if $(filter macos,$(torch_build)),,$(if $(GPU), (auto: nvidia-smi \
  lists a GPU), (auto: nvidia-smi lists no GPU))))
comma := ,

.PHONY: install test lint format bench gpu-check demo quality clean

install:
	$(if $(filter auto cpu cuda,$(TORCH)),,$(error TORCH must be auto, cpu or cuda, not '$(TORCH)'))
	@echo "make install: torch $(TORCH_VERSION), $(torch_what)$(torch_auto); from $(torch_why)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	# The pinned torch first, alone, so that the build chosen above is the one spectrosynth then finds.
	$(BIN)/python -m pip install torch==$(TORCH_VERSION)$(if $(torch_index), --index-url $(torch_index))
	$(BIN)/python -m pip install -e ".[test]"
	# basic-pitch, the transcriber of `spectrosynth evaluate`, without the old TensorFlow its metadata demands.
	$(BIN)/python -m pip install --no-deps basic-pitch==0.4.0

test:
	$(BIN)/python -m pytest

lint:
	$(BIN)/ruff check spectrosynth tests bench
	$(BIN)/ruff format --check spectrosynth tests bench

format:
	$(BIN)/ruff check --fix spectrosynth tests bench
	$(BIN)/ruff format spectrosynth tests bench

# All benchmarks (about an hour on a 2-core CPU). The random base checkpoint is written once to BASE_MODEL.
BASE_MODEL ?= /tmp/spectrosynth-base-random
bench:
	$(BIN)/python bench/tokenize_bench.py
	$(BIN)/python bench/speed_bench.py --checkpoint $(BASE_MODEL)
	$(BIN)/python bench/sampling_accuracy.py
	$(BIN)/python bench/sampler_speed.py --checkpoint $(BASE_MODEL)
	$(BIN)/python bench/batch_bench.py --checkpoint $(BASE_MODEL)
	$(BIN)/python bench/memory_bench.py --minutes 10 --model $(BASE_MODEL) --dtype float32
	$(BIN)/python bench/griffin_lim_bench.py
	$(BIN)/python bench/vocoder_bench.py
	$(BIN)/python bench/evaluate_validation.py
	$(BIN)/python bench/train_bench.py
	$(BIN)/python bench/int8_bench.py --checkpoint $(BASE_MODEL)
	$(BIN)/python bench/end_to_end.py --checkpoint $(BASE_MODEL)
	$(BIN)/python bench/stems_bench.py --checkpoint $(BASE_MODEL)

# The prepared GPU check (docs/performance.md#gpu-check): a fresh CUDA environment, the cuda tests and the
# CUDA benchmarks, under 8 minutes, into build/gpu-check/results-<date>/. Runs (quickly, CUDA skipped) on a CPU.
gpu-check:
	bench/gpu_check.sh

# The training demonstration (docs/training.md): a small model trained from scratch on this CPU, about an
# hour; run it again to resume. DEMO_STEPS more than before trains on.
DEMO_STEPS ?= 2400
demo:
	$(BIN)/python bench/train_demo.py --steps $(DEMO_STEPS)

# The measuring model (docs/quality.md): a small network trained from scratch on 55 tunes, with every
# doubling checkpoint swept on two song sets (the trend) beside it, one core each; then the cool-down branch
# from COOLDOWN_FROM, the raw weights, the figures. Many hours on a CPU; run again to resume (settings
# measured before are kept). MEASURE_STEPS more than before trains on.
MEASURE_STEPS ?= 14000
COOLDOWN_FROM ?= 11750
quality:
	OMP_NUM_THREADS=1 taskset -c 0 $(BIN)/python bench/measuring_model.py --steps $(MEASURE_STEPS) \
	  --keep $(COOLDOWN_FROM) & \
	  taskset -c 1 bench/trend_driver.sh 250 1000 2000 4000 $(MEASURE_STEPS); wait
	OMP_NUM_THREADS=1 $(BIN)/python bench/measuring_model.py --cooldown-from $(COOLDOWN_FROM) --steps $(MEASURE_STEPS)
	OMP_NUM_THREADS=1 $(BIN)/python bench/quality_sweep.py --run build/measure/cooldown-$(MEASURE_STEPS) \
	  --run-name cooldown --step $(MEASURE_STEPS) --settings core
	OMP_NUM_THREADS=1 $(BIN)/python bench/quality_sweep.py --step $(MEASURE_STEPS) --weights raw --settings core
	OMP_NUM_THREADS=1 $(BIN)/python bench/quality_sweep.py --step $(MEASURE_STEPS) --pictures
	$(BIN)/python bench/measuring_model.py --figures
	$(BIN)/python bench/quality_sweep.py --plot-only
	$(BIN)/python bench/quality_sweep.py --decide

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
