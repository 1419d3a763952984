# Every target bootstraps .venv itself, so a fresh clone needs nothing but python3 (>= 3.11).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test demo bench lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/gateway db upgrade
	$(BIN)/gateway serve

test: $(VENV)/.installed-dev
	$(BIN)/pytest -q

demo: $(VENV)/.installed
	$(BIN)/gateway demo

bench: $(VENV)/.installed-dev
	$(BIN)/python bench/ingress.py
	$(BIN)/python bench/campaign.py
	$(BIN)/python bench/report.py

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check gateway adapters bots tests bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
