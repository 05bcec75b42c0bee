# Two entry points for a new machine: `make demo` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU-only PyTorch: on this project's machines the 2.13.0 CPU wheel lies in /opt/wheels (pip's
# find-links), so pinning the version avoids a multi-GB CUDA download. Elsewhere, set
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu before `make`.
TORCH_SPEC ?= torch==2.13.0
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: demo test venv test-deps system-deps bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# Orthanc + its DICOMweb plugin from Debian, for the integration tests (needs root or sudo).
system-deps:
	@if ! command -v Orthanc >/dev/null && [ ! -x /usr/sbin/Orthanc ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq orthanc orthanc-dicomweb >/dev/null; \
	fi
	@test -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so || \
	  { echo "orthanc-dicomweb is missing: apt-get install orthanc-dicomweb"; exit 1; }

test-deps: $(VENV)/.installed-test system-deps

demo: venv
	$(BIN)/cxr-cds demo --host $(HOST) --port $(PORT)

test: test-deps
	$(BIN)/python -m pytest

bench: test-deps
	$(BIN)/python benchmarks/imaging.py
	$(BIN)/python benchmarks/generate.py
	$(BIN)/python benchmarks/hooks.py

clean:
	rm -rf .demo .pytest_cache
