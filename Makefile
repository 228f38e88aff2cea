# The two commands: `make demo` and `make test`. Everything else is for developers.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo demo-down test test-fast lint typecheck check prereqs venv bench bench-mpi soak clean

prereqs:
	@bash scripts/install-prereqs.sh

$(BIN)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install -q --upgrade pip >/dev/null
	$(BIN)/pip install -q -e '.[dev,mpi]' --config-settings editable_mode=compat
	@# bytecode up front: `hpcbatch submit` starts fast from its first run, even
	@# where PYTHONDONTWRITEBYTECODE is set
	@$(BIN)/python -m compileall -q hpcbatch >/dev/null
	@touch $@

venv: prereqs $(BIN)/.installed

demo: venv
	$(BIN)/hpcbatch demo

demo-down:
	-$(BIN)/hpcbatch stop
	-$(BIN)/hpcbatch sandbox down

test: venv
	$(BIN)/pytest -q -p no:cacheprovider

test-fast: venv
	$(BIN)/pytest -q tests/unit

lint: venv
	$(BIN)/ruff check hpcbatch tests benchmarks
	$(BIN)/ruff format --check hpcbatch tests benchmarks || true

typecheck: venv
	$(BIN)/mypy --strict hpcbatch

check: lint typecheck test

# 2,000 jobs on 4 sandbox hosts through 3 controller SIGKILLs, a 20 s black hole and
# a killed sshd (a short version runs in `make test`).
soak: venv
	$(BIN)/python -m tests.integration.soak

bench: venv
	$(BIN)/python benchmarks/dispatch.py

bench-mpi: venv
	$(BIN)/python benchmarks/gang_launch.py
	$(BIN)/python benchmarks/mpi_hello.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
