# mmjepa: `make test` and `make demo` create .venv when missing and install the project with the
# tested set of versions (constraints.txt) before running.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test test-slow demo bench-speed clean install

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,bench,retrieval,export]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

demo: $(STAMP)
	$(PY) -m mmjepa demo

bench-speed: $(STAMP)
	$(PY) -m mmjepa bench speed --json bench-speed.json

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
