# The README's two commands:
#   make release   build student_release/ and autograder/ from assignments/ and reference/
#   make test      run the whole test suite (what .ci/run calls)
# Both bootstrap .venv from requirements.txt when it is missing or older than the pins.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# The slowest tests and fixtures at the end of every run: where the ten minutes go.
DURATIONS ?= --durations=15
# Two pytest-xdist workers (CI has two cores); every grading gets a fresh sandbox uid from the
# grader (grading/uids.py); tests sharing /autograder stay on one worker (xdist_group).
XDIST ?= -n 2 --dist loadgroup

.PHONY: release test test-fast lint lock fixtures bench bench-d3rlpy venv clean corpus kill-matrix grading-tests \
	resources browser-tests sandbox-paths check-question grade

venv: $(STAMP)

$(STAMP): requirements.txt requirements.lock pyproject.toml
	@echo ">> bootstrapping $(VENV) from requirements.txt, every other package as requirements.lock pins it"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) tools/sync_environment.py --installable build/requirements.venv.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r build/requirements.venv.txt -c requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@# ipykernel writes the spec into a fresh tmp*_kernels folder and leaves it: give it a folder to lose.
	@tmp=$$(mktemp -d); TMPDIR=$$tmp $(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null; \
		status=$$?; rm -rf $$tmp; exit $$status
	@touch $(STAMP)

# After changing a pin in requirements.txt: install the new pins without the old lock, then write
# the lock from what got installed (and environment.yml from both). Then `make test`.
lock:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) tools/sync_environment.py --installable build/requirements.venv.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r build/requirements.venv.txt
	$(PY) tools/sync_environment.py --lock
	$(PY) tools/sync_environment.py

release: $(STAMP)
	$(PY) tools/build_release.py

# As root: let the sandbox user reach Python and .venv (shared with .ci/run through `make test`).
sandbox-paths: $(STAMP)
	@$(PY) tools/open_sandbox_paths.py

test: $(STAMP) sandbox-paths
	$(PY) -m ruff check .
	$(PY) -m pytest $(XDIST) $(DURATIONS) $(PYTEST_ARGS)

test-fast: $(STAMP) sandbox-paths
	$(PY) -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .

corpus: $(STAMP) sandbox-paths
	$(PY) -m pytest $(XDIST) -m corpus $(PYTEST_ARGS)

kill-matrix: $(STAMP) sandbox-paths
	$(PY) tools/kill_matrix.py

# The fast loop for one question: rebuild (without otter's self-check), then grade the solution
# and only the mutants that target question Q, and print their rows of the kill matrix.
check-question: $(STAMP)
	@test -n "$(Q)" || { echo "usage: make check-question Q=q4_behavior_cloning (or Q=q4, or a prefix: Q=q4_beh)"; exit 2; }
	$(PY) tools/build_release.py --no-self-check
	$(PY) tools/kill_matrix.py --question $(Q)

# Grade a whole class (assignments/offline_rl/README.instructor.md, "Grading a whole class"):
#   make grade ZIP=autograder/offline_rl/autograder.zip SUBMISSIONS=downloads/ OUT=graded/
# Extra options (--jobs 4, --shard 0/8, --force, --previous old/grades.csv): GRADE_ARGS="...".
GRADE_ARGS ?=
grade: $(STAMP) sandbox-paths
	@test -n "$(SUBMISSIONS)" -a -n "$(OUT)" || { echo "usage: make grade SUBMISSIONS=folder OUT=folder [ZIP=autograder/offline_rl/autograder.zip] [GRADE_ARGS=--jobs 4]"; exit 2; }
	$(PY) -m grading batch $(or $(ZIP),autograder/offline_rl/autograder.zip) $(SUBMISSIONS) $(OUT) $(GRADE_ARGS)

grading-tests: $(STAMP) sandbox-paths
	$(PY) -m pytest $(XDIST) -m grading $(PYTEST_ARGS)

browser-tests: $(STAMP)
	$(PY) -m pytest -m browser $(PYTEST_ARGS)

resources: $(STAMP) sandbox-paths
	$(PY) benchmarks/grading_resources.py

bench: $(STAMP)
	$(PY) benchmarks/bench_reference.py

# d3rlpy lives in its own venv (it pins gymnasium 1.0 and must never enter the course's
# environment); it gets the course's torch pin, so both sides run the same CPU build.
# Minari too, at the course's pin: the benchmark hands d3rlpy the data as a Minari dataset written
# by the course's venv (gymnasium 1.4) and read here (d3rlpy's gymnasium 1.0). Pillow because
# minari 0.5.4's hdf5 storage imports PIL without declaring it (the course's venv has it through
# matplotlib).
BENCH_VENV := build/bench-venv
D3RLPY     := d3rlpy==2.8.1

# uv (tools/venvs.py) installs from pip's own sources through the cache the tests' venvs share, so
# torch is unpacked once; it compiles no bytecode (as pip --no-compile): the few modules a run
# imports compile on first import, as the user who writes the venv. Order-only on .venv, whose uv
# it runs: a newer pin there must not rebuild .venv from inside tests/test_minari.py.
$(BENCH_VENV)/.installed: requirements.txt requirements.lock Makefile tools/venvs.py | $(STAMP)
	@echo ">> creating $(BENCH_VENV) with $(D3RLPY)"
	$(PY) tools/venvs.py $(BENCH_VENV) "$$(grep '^torch==' requirements.txt)" "$(D3RLPY)" \
		"$$(grep '^minari' requirements.txt)" "$$(grep -i '^pillow==' requirements.lock)"
	@touch $@

bench-d3rlpy: $(STAMP) $(BENCH_VENV)/.installed
	$(PY) benchmarks/bench_d3rlpy.py --d3rlpy-python $(BENCH_VENV)/bin/python $(BENCH_ARGS)

clean:
	rm -rf build .pytest_cache .ruff_cache
