# The README's two commands:
#   make release   build student_release/ and autograder/ from assignments/ and reference/
#   make test      run the whole test suite (what .ci/run calls)
# Both bootstrap .venv from requirements.txt when it is missing or older than the pins.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# Two pytest-xdist workers (CI has two cores), each grading as its own sandbox user
# (tests/corpus/corpus.py: default_uid); tests sharing /autograder stay on one (xdist_group).
XDIST ?= -n 2 --dist loadgroup

.PHONY: release test test-fast lint fixtures bench venv clean corpus kill-matrix grading-tests resources \
	sandbox-paths

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@echo ">> bootstrapping $(VENV) from requirements.txt"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) tools/sync_environment.py --installable build/requirements.venv.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r build/requirements.venv.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)

release: $(STAMP)
	$(PY) tools/build_release.py

# As root: let the sandbox user reach Python and .venv (shared with .ci/run through `make test`).
sandbox-paths: $(STAMP)
	@$(PY) tools/open_sandbox_paths.py

test: $(STAMP) sandbox-paths
	$(PY) -m ruff check .
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: $(STAMP) sandbox-paths
	$(PY) -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .

corpus: $(STAMP) sandbox-paths
	$(PY) -m pytest $(XDIST) -m corpus $(PYTEST_ARGS)

kill-matrix: $(STAMP) sandbox-paths
	$(PY) tools/kill_matrix.py

grading-tests: $(STAMP) sandbox-paths
	$(PY) -m pytest $(XDIST) -m grading $(PYTEST_ARGS)

resources: $(STAMP) sandbox-paths
	$(PY) benchmarks/grading_resources.py

bench: $(STAMP)
	$(PY) benchmarks/bench_reference.py

clean:
	rm -rf build .pytest_cache .ruff_cache
