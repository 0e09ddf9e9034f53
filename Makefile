# One obvious entry for each job.  `make demo` and `make test` are the README's two commands.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
DEMO   ?= /tmp/pcipass-example

.PHONY: venv demo test test-deps lint bench lab lab-smoke clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

venv: $(BIN)/python
	$(BIN)/python -m pip install -q -e .

# Build the document's example host (a RHEL 5.4 Xen dom0 with the simulated
# kernel) and show what pcipass sees there.
demo: venv
	rm -rf $(DEMO)
	$(BIN)/python -m pcipass.testing.example $(DEMO)
	$(BIN)/pcipass --root $(DEMO) list

# System packages the tests cross-check against (lspci, kmod's modprobe,
# libvirt's virt-xml-validate); needs root and apt.
test-deps:
	if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    $$(grep -v '^#' .ci/apt-packages.txt) >/dev/null; fi

test: test-deps venv
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/ruff check .
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

bench: venv
	$(BIN)/python benchmarks/bench_list.py

# Both scenarios run even when the first fails; the exit status reports either failure.
lab:
	rc=0; lab/run xen || rc=1; lab/run kvm || rc=1; exit $$rc

lab-smoke:
	lab/run smoke

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
