# Two commands: `make run` starts Stage on http://127.0.0.1:8080/, `make test` runs
# every test. Both set up .venv from requirements.txt first; `make test` also installs
# Debian's chromium (browser tests) and ffmpeg (ffprobe checks of recordings) when missing,
# the npm clients in tests/node (npm ci) when missing or when their lock changed, and
# GStreamer with PyGObject for Debian's python3 (tests/test_gstreamer_whip.py).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test chromium npm gstreamer

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

GSTREAMER_PACKAGES := python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 \
	gir1.2-gst-plugins-bad-1.0 gir1.2-nice-0.1 gstreamer1.0-plugins-base \
	gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-nice

gstreamer:
	@dpkg-query -W -f='$${Status}\n' $(GSTREAMER_PACKAGES) 2>/dev/null \
		| grep -c '^install ok installed$$' | grep -qx $(words $(GSTREAMER_PACKAGES)) || { \
		apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			$(GSTREAMER_PACKAGES); }

# The tests run on two processes (pytest-xdist; CI has two cores), each file's tests in
# one process; then those marked `alone`, which measure real-time gaps that a second busy
# process would disturb, run by themselves. Both always run; exit status 5 means only
# that ARGS selected none of a part's tests.
test: $(VENV)/installed chromium npm gstreamer
	$(PY) -m pytest -n 2 --dist loadfile -m "not alone" $(ARGS); parallel=$$?; \
	$(PY) -m pytest -m alone $(ARGS); alone=$$?; \
	for status in $$parallel $$alone; do \
		[ $$status -eq 0 ] || [ $$status -eq 5 ] || exit $$status; \
	done
