# make train: set up .venv if needed and run the default experiment (ARGS="key=value ..." for overrides)
# make test:  set up .venv if needed and run the whole test suite (one worker per core, each
#             taking whole modules, slow ones first: tests/conftest.py)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install train test test-fast lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

train: install
	$(BIN)/bpttlab-train $(ARGS)

test: install
	$(BIN)/python -m pytest -q -n auto --dist loadfile --no-loadscope-reorder

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

bench: install
	for script in bench bench_cells bench_runs bench_lru_scan bench_scalars bench_lyapunov; do \
		$(BIN)/python scripts/$$script.py --write-docs docs/benchmarks.md || exit 1; \
	done

clean:
	rm -rf $(VENV) build dist src/*.egg-info
