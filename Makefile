# make demo   set up .venv, then run the whole chain on configs/demo.yaml (embedded Ray + MLflow)
# make test   set up .venv, then lint and run the test suite (what .ci/run calls)
# make test-fast  lint and the tests not marked slow: a quick local loop (a few minutes)
# make bench  run the side-by-side benchmarks in bench/
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

.PHONY: setup demo test test-fast lint bench clean

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

clean:
	rm -rf $(VENV) workspace .pytest_cache .ruff_cache
