# One obvious entry for each job.  `make demo` and `make test` are the README's two commands.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
DEMO   ?= /tmp/pcipass-example

.PHONY: venv demo test test-deps test-pythons lint bench lab lab-smoke dist dist-files deb rpm clean

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

# The suite, and mypy targeting that version (the mypy that runs on 3.9 still checks for 3.9),
# on the oldest and newest Pythons pcipass supports (RHEL 9 / Debian 11 ship 3.9; Debian 13
# 3.13), from pyenv's interpreters.  A missing interpreter fails: CI must not pass
# on fewer versions than it claims.
PYENV_VERSIONS ?= $(HOME)/.pyenv/versions
OTHER_PYTHONS  ?= 3.9 3.13
test-pythons:
	set -e; for v in $(OTHER_PYTHONS); do \
	  py=$$(ls -d $(PYENV_VERSIONS)/$$v.*/bin/python 2>/dev/null | sort -V | tail -n 1); \
	  if [ -z "$$py" ]; then echo "test-pythons: no Python $$v under $(PYENV_VERSIONS) (pyenv install $$v)" >&2; exit 1; fi; \
	  echo "== pytest on $$($$py --version)"; \
	  [ -x .venv-$$v/bin/python ] || $$py -m venv .venv-$$v; \
	  .venv-$$v/bin/python -m pip install -q --upgrade pip; \
	  .venv-$$v/bin/python -m pip install -q -e '.[test]'; \
	  .venv-$$v/bin/python -m mypy --python-version $$v; \
	  .venv-$$v/bin/python -m pytest -p no:cacheprovider; \
	done

lint: venv
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/ruff check .
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

# Everything a host can install from, in $(DIST): `make dist`.
#   dist-files: pcipass.pyz (one file, stdlib only: `python3 pcipass.pyz list` on any host with
#               3.9+), pcipass.1 and bash/zsh completion generated from the parser, wheel, sdist;
#   deb:        Debian package with debhelper + dh-python (pybuild), lintian clean;
#   rpm:        RHEL 9 family package, built with rpmbuild (Debian's rpm package).
# Both packages are built from a copy of the tracked files plus the generated pages, with the
# system PATH: the distribution's python3 builds them, not one a version manager put first.
DIST      ?= dist
PKG_BUILD ?= build/pkg
VERSION   := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
SYSTEM_PATH = /usr/sbin:/usr/bin:/sbin:/bin
GENERATED = $(DIST)/pcipass.1 $(DIST)/pcipass.bash $(DIST)/_pcipass

dist: dist-files deb rpm

dist-files: venv
	$(BIN)/python -m pip install -q -e '.[test]' build
	$(BIN)/python packaging/build_zipapp.py --output $(DIST)/pcipass.pyz
	$(BIN)/python packaging/build_manpage.py --output $(DIST)/pcipass.1
	$(BIN)/python packaging/build_completion.py --output-dir $(DIST)
	$(BIN)/python -m build -q --outdir $(DIST) . >/dev/null

# A tree of the tracked files and the generated pages: what both packages are built from.
$(PKG_BUILD)/pcipass-$(VERSION): dist-files
	rm -rf $(PKG_BUILD) && mkdir -p $@/dist
	git ls-files -z | xargs -0 cp --parents -t $@
	cp $(GENERATED) $@/dist/

deb: $(PKG_BUILD)/pcipass-$(VERSION)
	cd $< && PATH=$(SYSTEM_PATH) dpkg-buildpackage -b -uc -us >../deb.log 2>&1 \
	  || { tail -30 $(PKG_BUILD)/deb.log; exit 1; }
	cp $(PKG_BUILD)/pcipass_$(VERSION)_all.deb $(DIST)/
	PATH=$(SYSTEM_PATH) lintian --fail-on error,warning $(DIST)/pcipass_$(VERSION)_all.deb

rpm: $(PKG_BUILD)/pcipass-$(VERSION)
	mkdir -p $(PKG_BUILD)/rpm/SOURCES
	tar -C $(PKG_BUILD) --exclude=debian -czf $(PKG_BUILD)/rpm/SOURCES/pcipass-$(VERSION).tar.gz \
	  pcipass-$(VERSION)
	PATH=$(SYSTEM_PATH) rpmbuild -bb --nodeps --define "_topdir $(abspath $(PKG_BUILD))/rpm" \
	  packaging/pcipass.spec >$(PKG_BUILD)/rpm.log 2>&1 || { tail -30 $(PKG_BUILD)/rpm.log; exit 1; }
	cp $(PKG_BUILD)/rpm/RPMS/noarch/pcipass-$(VERSION)-*.rpm $(DIST)/

bench: venv
	$(BIN)/python benchmarks/bench_list.py
	$(BIN)/python benchmarks/bench_verbs.py

# Both scenarios run even when the first fails; the exit status reports either failure.
lab:
	rc=0; lab/run xen || rc=1; lab/run kvm || rc=1; lab/run kvm-sriov || rc=1; exit $$rc

lab-smoke:
	lab/run smoke

clean:
	rm -rf $(VENV) .venv-3.* build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
