# Two commands on a fresh machine:
#   make run    create .venv if missing, install roar, run the embedded digits job
#   make test   create/update .venv with the test extras, run the default test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.roar-installed

.PHONY: run test test-slow benchmarks install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Re-install when the dependencies change. torch==2.14.1/torchvision==0.29.1 are pinned in pyproject.toml.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# --workers auto: one single-threaded worker per core (small models); --benchmark.stack auto: the
# seeds of a cell trained as one stacked model. Same fingerprints as without them (a rerun resumes).
run: $(STAMP)
	$(PY) -m roar benchmark --config configs/benchmark/digits_demo.yaml --out runs/digits_demo --workers auto --benchmark.stack auto

test: $(STAMP)
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

clean:
	rm -rf runs .pytest_cache
