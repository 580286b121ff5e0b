# The README and CI call these targets verbatim.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test check lint typecheck bench coverage clean install

# the compiled engine (setup.py) is rebuilt when its sources change
COMPILED := setup.py $(addprefix src/openperps/core/,book.py engine.py margin.py numbers.py)

$(STAMP): pyproject.toml $(COMPILED)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[server,client,cli,dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/openperps serve --sim --funding-interval 120

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests bench setup.py
	$(BIN)/ruff format --check src tests bench setup.py

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

coverage: $(STAMP)
	OPENPERPS_PURE=1 $(BIN)/python -m pytest -q --cov=openperps.core --cov-branch --cov-report=term-missing tests/core tests/properties

bench: $(STAMP)
	$(BIN)/python bench/engine.py
	$(BIN)/python bench/store.py
	$(BIN)/python bench/book.py
	$(BIN)/python bench/feed.py
	$(BIN)/python bench/api.py
	$(BIN)/python bench/bus.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
	find src -name "*.so" -delete
