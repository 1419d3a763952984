# Every target bootstraps .venv itself, so a fresh clone needs nothing but python3 (>= 3.11).
# `make test` also needs Debian's chromium and chromium-driver for the console's browser tests;
# `browser-deps` installs them when they are missing (as root, from Debian's packages).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test demo bench chaos lint clean browser-deps wheel

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

test: $(VENV)/.installed-dev browser-deps
	$(BIN)/pytest -q

browser-deps:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  echo "installing Debian chromium + chromium-driver for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
	    || { echo "could not install chromium; as root run: apt-get install chromium chromium-driver" >&2; exit 1; }; \
	fi

demo: $(VENV)/.installed
	$(BIN)/gateway demo

bench: $(VENV)/.installed-dev
	$(BIN)/python bench/ingress.py
	$(BIN)/python bench/inbound.py --platform all
	$(BIN)/python bench/inbound.py --platform all --db postgres --rate 1000 --seconds 10
	$(BIN)/python bench/inbound.py --platform dingtalk --db postgres --compare-cap
	$(BIN)/python bench/instances.py --compare both --clerks 5 50
	$(BIN)/python bench/caps.py
	$(BIN)/python bench/campaign.py
	$(BIN)/python bench/report.py

# Fault trials on the local PostgreSQL (kill -9, DingTalk faults, PostgreSQL restarts; needs root for
# the last); `.venv/bin/python -m chaos --help` for quick runs.
chaos: $(VENV)/.installed-dev
	$(BIN)/python -m chaos

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check gateway adapters bots tests bench

# A release: the wheel users install (`pip install dist/advisor_gateway-*.whl`).
wheel: $(VENV)/.installed
	$(BIN)/pip wheel -q --no-deps -w dist .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist *.egg-info
