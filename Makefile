# Two commands on a fresh machine with Python 3.11 and pip:
#   make demo   - set up, then run Propel's main job on the embedded default
#   make test   - set up, then run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint serve bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

tests/node/node_modules/.package-lock.json: tests/node/package-lock.json
	cd tests/node && npm ci --no-audit --no-fund --silent

demo: $(STAMP)
	$(BIN)/propel demo

test: $(STAMP) tests/node/node_modules/.package-lock.json
	$(BIN)/ruff check propel tests benchmarks
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check propel tests benchmarks

serve: $(STAMP)
	$(BIN)/propel serve

clean:
	rm -rf $(VENV) propel-data tests/node/node_modules
