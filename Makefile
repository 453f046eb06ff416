# Two commands: `make run` starts Stage on http://127.0.0.1:8080/, `make test` runs
# every test. Both set up .venv from requirements.txt first; `make test` also installs
# Debian's chromium (browser tests) and ffmpeg (ffprobe checks of recordings) when missing,
# and the npm clients in tests/node (npm ci) when missing or when their lock changed.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test chromium npm

$(VENV)/installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

run: $(VENV)/installed
	$(PY) -m stage $(ARGS)

chromium:
	@{ command -v chromium && command -v ffprobe; } >/dev/null || { \
		apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium ffmpeg; }

# npm clients the tests run (tests/test_npm_clients.py), reinstalled when the lock changes.
npm: tests/node/node_modules/.installed

tests/node/node_modules/.installed: tests/node/package-lock.json
	npm ci --prefix tests/node --no-audit --no-fund
	touch $@

test: $(VENV)/installed chromium npm
	$(PY) -m pytest $(ARGS)
