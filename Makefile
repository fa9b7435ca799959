# MedAug Studio. `make run` serves the app on the phantom data; `make test` runs every test;
# `make test-fast` runs all but the slow and browser tests (under 2 minutes on 2 cores).
# Both create .venv and install what is missing (re-installing when a requirements file changes).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY      = $(VENV)/bin/python
PORT   ?= 8501

.PHONY: run test test-fast install install-test browser bench clean-workspace

$(VENV)/.runtime: requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	@touch $@

$(VENV)/.test: $(VENV)/.runtime requirements-test.txt
	$(PY) -m pip install --disable-pip-version-check -q -r requirements-test.txt
	@touch $@

install: $(VENV)/.runtime
install-test: $(VENV)/.test

# Headless Chromium for the browser tests (Debian package; never `playwright install`).
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing chromium for the browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "warning: /usr/bin/chromium is missing; browser tests will be skipped (sudo apt-get install chromium)"; fi

run: install
	$(VENV)/bin/streamlit run app.py --server.port $(PORT)

# Two pytest workers (pytest-xdist), a test file each at a time: most tests use one core (one torch
# thread, waits on jobs and browsers), so two workers fill a 2-core machine. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test: install-test browser
	$(PY) -m pytest $(XDIST)

# The slow tests are listed in tests/conftest.py (SLOW); the browser ones carry their own marker.
test-fast: install-test
	$(PY) -m pytest $(XDIST) -m "not slow and not browser"

bench: install-test browser
	$(PY) bench/phantom.py
	$(PY) bench/startup.py

clean-workspace:
	rm -rf workspace
