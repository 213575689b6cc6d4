# Two commands on a fresh machine: `make smoke` (the tiny pipeline) and `make test`.
# Every target sets itself up through `install`, which is quick when nothing changed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_DIR ?= runs/smoke
CONSTRAINTS ?= constraints-cpu.txt
ORIGINAL_PATH := $(PATH)
export PATH := $(abspath $(BIN)):$(PATH)
# CPU-only machines: keep DeepSpeed and torch quiet and single-threaded per rank where it matters.
export TOKENIZERS_PARALLELISM := false
export WANDB_MODE ?= offline
# DeepSpeed's JIT-built CPU op lives in this virtualenv (built once by `install`; see scripts/prebuild_ops.py).
export TORCH_EXTENSIONS_DIR ?= $(abspath $(VENV))/torch-extensions

.PHONY: install test test-fast test-gpu wheels smoke smoke-3d smoke-moe plan-gpt3 bench bench-rlhf clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# setup.cfg takes version ranges; CONSTRAINTS keeps CI on the CPU build of torch (an
	# unconstrained torch from PyPI is the CUDA build). `make install CONSTRAINTS=` drops it.
	$(BIN)/python -m pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[test]'
	$(BIN)/python scripts/prebuild_ops.py
	touch $@

test: install
	$(BIN)/python -m pytest -q --durations=12

test-fast: install
	$(BIN)/python -m pytest -q -m "not distributed and not e2e"

# The single-GPU CI target (SPEC §12): CUDA-only tests, the tiny pipeline in bf16, the benchmarks
# against HF, one report (runs/test-gpu/REPORT.md). Not through `install`: it keeps the machine's
# own CUDA torch (a venv with --system-site-packages). Without a GPU it says SKIPPED and exits 77.
# Offline: `make test-gpu WHEELS=dir` installs only from a folder `make wheels` filled.
# the machine's own Python (with its CUDA torch), not this checkout's CPU .venv
GPU_PYTHON ?= $(shell PATH='$(ORIGINAL_PATH)' command -v python3)
WHEELS ?=
test-gpu:
	GPU_PYTHON=$(GPU_PYTHON) WHEELS=$(WHEELS) bash scripts/test_gpu.sh

# Every wheel but torch for a GPU image (run where the registry is reachable): its Python, its
# platform tag and its torch version as parameters.
PY ?= 3.11
PLATFORM ?= manylinux_2_28_x86_64
GPU_TORCH ?= 2.11.0
wheels: install
	$(BIN)/python scripts/gpu_wheels.py --dest $(or $(WHEELS),wheels) --python-version $(PY) \
		--platform $(PLATFORM) --torch $(GPU_TORCH)

# The whole InstructGPT pipeline on the tiny GPT, each phase its own deepspeed launcher process.
smoke: install
	$(BIN)/orchestrate run recipes/tiny.yaml --run-dir $(RUN_DIR)
	$(BIN)/orchestrate status $(RUN_DIR)
	$(BIN)/orchestrate report $(RUN_DIR)

smoke-3d: install
	$(BIN)/orchestrate run recipes/tiny-3d.yaml --run-dir runs/smoke-3d
	$(BIN)/orchestrate status runs/smoke-3d

smoke-moe: install
	$(BIN)/orchestrate run recipes/tiny-moe-3d.yaml --run-dir runs/smoke-moe
	$(BIN)/orchestrate status runs/smoke-moe

plan-gpt3: install
	$(BIN)/orchestrate plan --model gpt3-175b --gpus 1024 --gpu a100-80g --top 5
	$(BIN)/orchestrate config --model gpt3-175b --gpus 1024 --gpu a100-80g -o ds_configs/gpt3-175b-1024xa100-80g.json

# Every benchmark, each rewriting its own section of BENCHMARKS.md (14 min measured on 2 idle cores
# before moe_layouts joined: its two 8-rank runs add a few minutes).
bench: install
	$(BIN)/python benchmarks/planner_search.py --repeats 30 --write BENCHMARKS.md
	$(BIN)/python -m benchmarks.train_throughput --steps 10 --write BENCHMARKS.md
	$(BIN)/python -m benchmarks.pipeline_bubble --pp 2 4 --micro-batches 4 8 16 --steps 3 --write BENCHMARKS.md
	$(BIN)/python -m benchmarks.memory_accuracy --write BENCHMARKS.md
	$(BIN)/python -m benchmarks.rollout_speed --rounds 5 --write BENCHMARKS.md
	$(BIN)/python -m benchmarks.attention_masks --rounds 3 --batch 4 --seq 1024 --threads 1 --write BENCHMARKS.md
	$(BIN)/python -m benchmarks.dp_scaling --ranks 1 2 4 --steps 4 --write BENCHMARKS.md
	$(BIN)/python -m benchmarks.curation_speed --write BENCHMARKS.md
	$(BIN)/python -m benchmarks.moe_layouts --write BENCHMARKS.md

# The tiny pipeline over three seeds (about 3 minutes a seed on idle cores): the RLHF phases section.
bench-rlhf: install
	$(BIN)/python benchmarks/rlhf_seeds.py --seeds 1 2 3 4 5 --jobs 2 --write BENCHMARKS.md

clean:
	rm -rf $(VENV) runs .cache .pytest_cache
