# Two commands: `make run` starts Stage on http://127.0.0.1:8080/, `make test` runs
# every test. Both set up .venv from requirements.txt first; `make test` also installs
# Debian's chromium (browser tests) and ffmpeg (ffprobe checks of recordings) when missing.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test chromium

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

test: $(VENV)/installed chromium
	$(PY) -m pytest $(ARGS)
