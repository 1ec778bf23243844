# The README's commands. `make install` builds .venv; `make test` runs every test in it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test lint format bench demo quality clean

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	# The pinned torch first: an unpinned one would pull the CUDA build where a CPU one is wanted.
	$(BIN)/python -m pip install torch==2.13.0
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
	$(BIN)/python bench/evaluate_validation.py
	$(BIN)/python bench/train_bench.py
	$(BIN)/python bench/int8_bench.py --checkpoint $(BASE_MODEL)
	$(BIN)/python bench/end_to_end.py --checkpoint $(BASE_MODEL)

# The training demonstration (docs/training.md): a small model trained from scratch on this CPU, about an
# hour; run it again to resume. DEMO_STEPS more than before trains on.
DEMO_STEPS ?= 2400
demo:
	$(BIN)/python bench/train_demo.py --steps $(DEMO_STEPS)

# The measuring model (docs/quality.md): the demonstration's network trained on, on 65 tunes, then the
# quality-against-speed sweep on its held-out songs. Hours on a CPU; run again to resume and train on.
MEASURE_STEPS ?= 40000
quality:
	test -f build/demo/run/final/model_index.json || $(MAKE) demo
	$(BIN)/python bench/measuring_model.py --steps $(MEASURE_STEPS)
	$(BIN)/python bench/quality_sweep.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
