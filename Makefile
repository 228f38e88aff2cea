# The two commands: `make demo` and `make test`. Everything else is for developers.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo demo-down test test-fast test-compat docs-check lint format typecheck check prereqs venv bench bench-mpi soak soak-ha clean

prereqs:
	@bash scripts/install-prereqs.sh

$(BIN)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install -q --upgrade pip >/dev/null
	$(BIN)/pip install -q -e '.[dev,mpi]' --config-settings editable_mode=compat
	@# bytecode up front: `hpcbatch submit` starts fast from its first run, even
	@# where PYTHONDONTWRITEBYTECODE is set
	@$(BIN)/python -m compileall -q hpcbatch >/dev/null
	@# `hpcbatch` started without `site` (docs/performance.md): pip's entry point loads it first
	$(BIN)/python -m hpcbatch.cli.quick --write-launcher $(BIN)/hpcbatch
	@touch $@

# Shell completion, on in every shell that activates the venv (elsewhere:
# `source <(hpcbatch completion bash)` in ~/.bashrc, or zsh after compinit).
COMPLETION = $(VENV)/share/hpcbatch/completion.bash
$(COMPLETION): $(BIN)/.installed hpcbatch/cli/complete.py
	@mkdir -p $(@D)
	$(BIN)/hpcbatch completion bash > $@
	$(BIN)/hpcbatch completion zsh > $(@D)/_hpcbatch
	@grep -q 'share/hpcbatch/' $(BIN)/activate || printf '%s\n' \
	  '# hpcbatch shell completion (the Makefile venv target)' \
	  'if [ -n "$${BASH_VERSION:-}" ]; then . "$$VIRTUAL_ENV/share/hpcbatch/completion.bash";' \
	  'elif [ -n "$${ZSH_VERSION:-}" ]; then . "$$VIRTUAL_ENV/share/hpcbatch/_hpcbatch"; fi' \
	  >> $(BIN)/activate

venv: prereqs $(BIN)/.installed $(COMPLETION)

demo: venv
	$(BIN)/hpcbatch demo

demo-down:
	-$(BIN)/hpcbatch stop
	-$(BIN)/hpcbatch sandbox down

test: venv
	$(BIN)/pytest -q -p no:cacheprovider

test-fast: venv
	$(BIN)/pytest -q tests/unit

# The tiers most sensitive to the interpreter (asyncio, asyncssh, the simulated hosts,
# real-sshd faults), for the other Pythons CI finds: make test-compat PYTHON=python3.13 VENV=.venv-3.13
COMPAT_TESTS = tests/unit tests/integration/test_simhosts.py tests/integration/test_faults.py \
	tests/integration/test_gang_faults.py tests/integration/test_host_failures.py \
	tests/integration/test_store_faults.py tests/integration/test_agent_process.py
test-compat: prereqs
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install -q --upgrade pip >/dev/null
	$(BIN)/pip install -q -e '.[dev]' --config-settings editable_mode=compat
	$(BIN)/python --version
	$(BIN)/pytest -q -p no:cacheprovider $(COMPAT_TESTS)

# The README's and docs' examples marked <!-- runnable -->, after `hpcbatch demo`
# in a scratch HPCBATCH_HOME (also part of `make test`: tests/integration/test_docs.py).
docs-check: venv
	$(BIN)/python scripts/docs_check.py

lint: venv
	$(BIN)/ruff check hpcbatch tests benchmarks scripts
	$(BIN)/ruff format --check hpcbatch tests benchmarks scripts

# Rewrites files in place: `make lint` checks that it has nothing left to do.
format: venv
	$(BIN)/ruff format hpcbatch tests benchmarks scripts
	$(BIN)/ruff check --fix hpcbatch tests benchmarks scripts

typecheck: venv
	$(BIN)/mypy --strict hpcbatch

check: lint typecheck test

# 2,000 jobs on 4 sandbox hosts through 3 controller SIGKILLs, a 20 s black hole and
# a killed sshd (a short version runs in `make test`).
soak: venv
	$(BIN)/python -m tests.integration.soak

# 2,000 jobs on 4 sandbox hosts and two controllers on one PostgreSQL store: the active
# one SIGKILLed three times and SIGSTOPped once (a short version runs in `make test`).
soak-ha: venv
	$(BIN)/python -m tests.integration.soak_ha

bench: venv
	$(BIN)/python benchmarks/dispatch.py

bench-mpi: venv
	$(BIN)/python benchmarks/gang_launch.py
	$(BIN)/python benchmarks/mpi_hello.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
