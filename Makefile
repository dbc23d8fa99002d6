# The README's two commands. Each sets itself up: .venv, pinned dependencies, the hyperkd._C build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEPS := $(VENV)/.deps-installed
BUILT := $(VENV)/.hyperkd-built
SOURCES := $(wildcard csrc/*.cpp csrc/cpu/*.cpp csrc/cuda/*.cu csrc/*.h csrc/cpu/*.h) setup.py pyproject.toml
# CUDA sources compile without a GPU when the toolkit is installed.
export CUDA_HOME ?= $(firstword $(wildcard /usr/local/cuda /usr/local/cuda-*))

.PHONY: demo test bench setup clean

demo: $(BUILT)
	$(PY) -m hyperkd demo

test: $(BUILT)
	$(PY) -m pytest tests $(PYTEST_ARGS)

bench: $(BUILT)
	$(PY) -m hyperkd bench

setup: $(BUILT)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(DEPS): requirements.txt | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(BUILT): $(DEPS) $(SOURCES)
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

clean:
	rm -rf build *.egg-info hyperkd/*.so $(BUILT)
