# Two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv (python3 -m venv) and install the pinned project when it is
# missing or pyproject.toml changed.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_out
PYTEST_ARGS ?=

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip==25.3
	$(PY) -m pip install -e '.[dev]'
	$(PY) -m pip check
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m jobs.demo --output $(DEMO_DIR)

# pytest exits 5 when it collects nothing (e.g. a filter matched no test): not a failure.
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi; exit $$rc

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: $(STAMP)
	$(PY) bench/pretrain_step.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
