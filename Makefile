# The two commands a newcomer needs: `make demo` and `make test`. Both bootstrap .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vaerr demo --output demo_out

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Two pytest workers, each taking whole test files (module fixtures made once): a third of the
# serial suite is waiting (Ray start-up, health checks, subprocesses), which the other file's
# work fills. TEST_WORKERS=0 runs it serially in one process.
TEST_WORKERS ?= 2

test: lint
	$(BIN)/python -m pytest -q --durations=25 -n $(TEST_WORKERS) --dist loadfile
