# make demo   set up .venv, then run the whole chain on configs/demo.yaml (embedded Ray + MLflow)
# make test   set up .venv, then lint and run the test suite (what .ci/run calls)
# make test-fast  lint and the tests not marked slow: a quick local loop (a few minutes)
# make bench  run the side-by-side benchmarks in bench/
# make gpu-wheelhouse  wheels of DeepSpeed and of what it imports that a bare GPU machine (CUDA torch,
#             transformers, safetensors, sentencepiece, pyarrow; no registry) lacks, at this venv's
#             versions, into build/wheelhouse/ (compiled ones for several Pythons); fails over 64 MiB
# make gpu-smoke  bench/gpu_smoke.py on one CUDA GPU: gpt2core vs transformers, the chunked loss in
#             bf16/fp16 vs fp32, DeepSpeed ZeRO 1/2 bf16, bench_model rows; one table, exit 1 on a
#             failure (one line and exit 0 without CUDA). Needs no venv: on the GPU machine, from the
#             repo root with build/wheelhouse/ copied in, `make gpu-smoke PYTHON=python3` (ARGS=...)
#
# Set-up order matters: torch first (TORCH_SPEC: the local CPU build here; on a GPU machine e.g.
# TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"), then DeepSpeed
# without build isolation (its build step would otherwise fetch another torch), then the project.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
DEEPSPEED_SPEC ?= deepspeed==0.19.8
CONFIG ?= configs/demo.yaml
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast lint bench clean gpu-wheelhouse gpu-smoke

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet --no-build-isolation $(DEEPSPEED_SPEC)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python jobs/pipeline.py --config $(CONFIG) $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# pytest exits 5 when it collected no tests: report it instead of failing the build.
test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

test-fast: lint
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	for b in bench/bench_*.py; do $(BIN)/python $$b || exit 1; done

WHEELHOUSE ?= build/wheelhouse
# What DeepSpeed imports at run time beyond torch, numpy, packaging and tqdm (torch and transformers
# bring those); typing-extensions too, since pydantic may need a newer one than torch's.
GPU_WHEELS := deepspeed einops hjson msgpack psutil py-cpuinfo pydantic pydantic-core annotated-types \
	typing-inspection typing-extensions
# Interpreter-specific wheels again for these Pythons: the GPU machine's is not known here, and pip
# --no-index there picks the one that fits (psutil's abi3 wheel fits them all).
GPU_WHEEL_PYTHONS ?= 3.10 3.11 3.12 3.13
GPU_WHEEL_PLATFORMS := --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64

# Not on $(STAMP), which an edited Makefile makes stale: it only needs the venv's DeepSpeed and torch.
gpu-wheelhouse:
	@test -x $(BIN)/python || { echo "no $(VENV): run make setup first"; exit 1; }
	rm -rf $(WHEELHOUSE) && mkdir -p $(WHEELHOUSE)
	$(BIN)/python -c "import sys, importlib.metadata as m; print(*(f'{n}=={m.version(n)}' for n in sys.argv[1:]), sep='\n')" \
		$(GPU_WHEELS) > $(WHEELHOUSE)/requirements.txt
	$(BIN)/pip wheel --quiet --no-deps --no-build-isolation --wheel-dir $(WHEELHOUSE) -r $(WHEELHOUSE)/requirements.txt
	for py in $(GPU_WHEEL_PYTHONS); do \
		$(BIN)/pip download --quiet --no-deps --only-binary=:all: --python-version $$py $(GPU_WHEEL_PLATFORMS) \
			--dest $(WHEELHOUSE) $$(grep -E '^(pydantic-core|msgpack)==' $(WHEELHOUSE)/requirements.txt) || exit 1; \
	done
	@ls -1 $(WHEELHOUSE)
	@du -sb $(WHEELHOUSE) | awk '{ printf "$(WHEELHOUSE): %.1f MiB\n", $$1 / 2^20; exit ($$1 >= 64 * 2^20) }'

# The venv's python where there is one, else $(PYTHON): the GPU machine has no venv.
SMOKE_PYTHON = $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))
gpu-smoke:
	PYTHONPATH=. $(SMOKE_PYTHON) bench/gpu_smoke.py \
		$(if $(wildcard $(WHEELHOUSE)/requirements.txt),--wheelhouse $(WHEELHOUSE)) $(ARGS)

clean:
	rm -rf $(VENV) workspace .pytest_cache .ruff_cache
