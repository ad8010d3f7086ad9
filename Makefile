# Two commands: `make test` and `make demo`. Everything else is a helper for them.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: test demo venv native lint typecheck bench clean system-deps

# System programs the tests use for real, as command:Debian-package pairs. The missing ones are
# installed from Debian's packages (needs root or sudo).
SYSTEM_DEPS := mosquitto:mosquitto mosquitto_pub:mosquitto-clients shellcheck:shellcheck \
	cloud-init:cloud-init mcopy:mtools mkfs.vfat:dosfstools sfdisk:fdisk systemd-analyze:systemd
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-deps:
	@missing=""; for pair in $(SYSTEM_DEPS); do \
		PATH="$$PATH:/usr/sbin:/sbin" command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing from Debian's packages:$$missing"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

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

demo: $(STAMP) system-deps
	$(PY) scripts/demo.py

bench: $(STAMP)
	$(PY) -m benchmarks.kernels

clean:
	rm -rf $(VENV) build *.egg-info edge_agent/_native_c*.so edge_agent/_native_c.c
