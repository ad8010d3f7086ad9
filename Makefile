# Two commands: `make test` and `make demo`. Everything else is a helper for them.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: test demo venv native lint typecheck bench clean

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

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m benchmarks.kernels

bench: $(STAMP)
	$(PY) -m benchmarks.kernels

clean:
	rm -rf $(VENV) build *.egg-info edge_agent/_native_c*.so edge_agent/_native_c.c
