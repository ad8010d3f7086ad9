# Two commands: `make test` and `make demo`. Everything else is a helper for them.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: test demo venv native lint typecheck bench clean system-deps

# System packages the tests talk to for real. Installed from Debian when missing (needs root or sudo).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-deps:
	@command -v mosquitto >/dev/null 2>&1 || command -v /usr/sbin/mosquitto >/dev/null 2>&1 || { \
		echo "installing mosquitto from Debian's packages"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq mosquitto mosquitto-clients >/dev/null; }

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel

# Reinstall when the distribution's metadata or any C source changes.
$(STAMP): $(PY) pyproject.toml setup.py native/build.py $(wildcard native/src/*) $(wildcard native/cdef/*)
	$(PIP) install --quiet -e '.[test]'
	touch $@

venv: $(STAMP)

# Rebuild the C kernel in place after editing native/ (what `pip install -e` did at install).
native: $(STAMP)
	$(PY) setup.py --quiet build_ext --inplace

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: $(STAMP) system-deps
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m benchmarks.kernels

bench: $(STAMP)
	$(PY) -m benchmarks.kernels

clean:
	rm -rf $(VENV) build *.egg-info edge_agent/_native_c*.so edge_agent/_native_c.c
