# The README's two commands:
#   make release   build student_release/ and autograder/ from assignments/ and reference/
#   make test      run the whole test suite (what .ci/run calls)
# Both bootstrap .venv from requirements.txt when it is missing or older than the pins.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: release test test-fast lint fixtures bench venv clean corpus kill-matrix grading-tests resources check-question

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@echo ">> bootstrapping $(VENV) from requirements.txt"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)

release: $(STAMP)
	$(PY) tools/build_release.py

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .

corpus: $(STAMP)
	$(PY) -m pytest -m corpus $(PYTEST_ARGS)

kill-matrix: $(STAMP)
	$(PY) tools/kill_matrix.py

# The fast loop for one question: rebuild (without otter's self-check), then grade the solution
# and only the mutants that target question Q, and print their rows of the kill matrix.
check-question: $(STAMP)
	@test -n "$(Q)" || { echo "usage: make check-question Q=q4_behavior_cloning (or Q=q4)"; exit 2; }
	$(PY) tools/build_release.py --no-self-check
	$(PY) tools/kill_matrix.py --question $(Q)

grading-tests: $(STAMP)
	$(PY) -m pytest -m grading $(PYTEST_ARGS)

resources: $(STAMP)
	$(PY) benchmarks/grading_resources.py

bench: $(STAMP)
	$(PY) benchmarks/bench_reference.py

clean:
	rm -rf build .pytest_cache .ruff_cache
